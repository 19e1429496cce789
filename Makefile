# The two commands of the README.  Both set up what is missing first.
.PHONY: demo test lint bench clean

demo:
	scripts/demo.sh

test:
	scripts/setup.sh
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

lint:
	.venv/bin/ruff check bpf_sdt codegen clang_plugin postlink hooks tests bench
	MYPY=.venv/bin/mypy scripts/typecheck.sh

bench:
	scripts/setup.sh
	.venv/bin/python bench/run.py

clean:
	rm -rf samples/build samples/build-* .pytest_cache
