# The two commands of the README.  Both set up what is missing first.
.PHONY: demo test lint bench clean

demo:
	scripts/demo.sh

test:
	scripts/setup.sh
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

# From a fresh clone too: setup.sh makes .venv; typecheck.sh changes directory,
# so it gets mypy by absolute path.  `ruff check .` covers every package
# (its defaults skip .venv and build/).
lint:
	scripts/setup.sh
	.venv/bin/ruff check .
	MYPY=$(CURDIR)/.venv/bin/mypy scripts/typecheck.sh

bench:
	BPF_SDT_SETUP_BENCH=1 scripts/setup.sh
	.venv/bin/python bench/run.py

clean:
	rm -rf samples/build samples/build-* .pytest_cache
