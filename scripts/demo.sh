#!/usr/bin/env bash
# The main job: build the samples with probes, check them, list their probes,
# and load every object into the kernel verifier (when bpf() is permitted).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { echo; echo "==> [$1/5] $2"; }

step 1 "setup (installs only what is missing)"
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
CLANG=${BPF_CLANG:-clang-19}

step 2 "build samples/ with probes ($CLANG, make hook; linked programs via bpf-sdt link)"
make -s -C samples BPF_CLANG="$CLANG" BPF_SDT_OUTDIR=build
objs=$(make -s -C samples objects BPF_SDT_OUTDIR=build)

step 3 "bpf-sdt check"
(cd samples && bpf-sdt check $objs && echo "all $(wc -w <<<"$objs") objects well-formed")

step 4 "bpf-sdt list"
(cd samples && bpf-sdt list $objs)

step 5 "load into the kernel verifier"
set +e
(cd samples && ../scripts/load.sh $objs)
rc=$?
set -e
if [[ $rc -eq 3 ]]; then
	echo "bpf() is not permitted here (not root): built, checked and listed only"
	rc=0
fi
echo
echo "demo finished in $(( $(date +%s) - start ))s"
exit $rc
