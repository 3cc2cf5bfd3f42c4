#!/usr/bin/env bash
# The prepared GPU check (issue 15): one script for a machine with one CUDA GPU and no network.
#
#   bash benchmarks/device_check.sh [--dry_run] [--output_dir DIR] [--wheels DIR] [-- device_check.py options]
#
# 1. Installs the pure-Python wheels of the wheel folder (default .whl/ in the repository root, kept out
#    of git; --wheels or DEVICE_CHECK_WHEELS) into /tmp/device_check_site and puts it on PYTHONPATH.
#    Without a wheel folder it checks that diffusers imports and stops with a message if not.
# 2. Runs the CUDA tests, pytest -m cuda tests/test_cuda.py (they skip without a GPU), bounded by
#    DEVICE_CHECK_TESTS_TIMEOUT seconds (default 90).
# 3. Runs benchmarks/device_check.py: every part in its own process under its own bound (--part_timeout
#    NAME=SECONDS after -- changes one), all of them within what is left of DEVICE_CHECK_BUDGET seconds
#    (default 540: the whole script ends within 9 minutes, inside one 10-minute device call, leaving a
#    15-minute device session time to rerun a part; a dry run: no budget unless set); the parts that no
#    longer fit are recorded as not measured. It writes DIR/device_check.json, DIR/device_check.md and
#    this script's log DIR/device_check.log (a dry run: device_check_dry_run.*). DIR: --output_dir, else
#    $OUT when set, else benchmarks/results.
#
# --dry_run: the same steps on the CPU with tiny models (tests the script; CI runs it).
#
# Preparing the wheel folder (once, on a machine with PyPI; the GPU machine has python 3.12, torch,
# transformers, accelerate, huggingface_hub 1.x, safetensors, numpy, pillow, pyarrow, regex, requests,
# filelock, but not diffusers). diffusers needs importlib_metadata, which needs zipp and lazy-importer:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl diffusers==0.42.1 importlib_metadata==10.2.0 zipp==4.1.2 lazy-importer==0.1.0
#
# Check each wheel's needs with: unzip -p .whl/NAME-*.whl '*/METADATA' | grep ^Requires-Dist
# (skip the "extra ==" lines; diffusers 0.42.1 needs huggingface-hub>=1.32 and safetensors>=0.8, which the
# GPU machine had: add their wheels too if its versions are older). Keep one version of each package.
# The folder is about 6.5 MB: it travels with the repository to the GPU machine, outside git.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHEELS="${DEVICE_CHECK_WHEELS:-$REPO/.whl}"
SITE="${DEVICE_CHECK_SITE:-/tmp/device_check_site}"
TESTS_TIMEOUT="${DEVICE_CHECK_TESTS_TIMEOUT:-90}"
BUDGET="${DEVICE_CHECK_BUDGET:-}"
INSTALL_TIMEOUT="${DEVICE_CHECK_INSTALL_TIMEOUT:-20}"
OUTPUT_DIR="${OUT:-$REPO/benchmarks/results}"
DRY_RUN=()
while [ $# -gt 0 ]; do
    case "$1" in
        --dry_run) DRY_RUN=(--dry_run); shift ;;
        --output_dir) OUTPUT_DIR="${2:?--output_dir needs a folder}"; shift 2 ;;
        --wheels) WHEELS="${2:?--wheels needs a folder}"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown option $1 (device_check.py options go after --; see --help)" >&2; exit 2 ;;
    esac
done

mkdir -p "$OUTPUT_DIR" || exit 2
STEM="device_check${DRY_RUN:+_dry_run}"
LOG="$OUTPUT_DIR/$STEM.log"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# Everything below goes to the terminal and to the log.
exec > >(tee "$LOG") 2>&1

cd "$REPO" || exit 2
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
echo "== device_check.sh: $(date -u +%Y-%m-%dT%H:%M:%SZ), $("$PYTHON" --version 2>&1), output $OUTPUT_DIR"

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
    echo "== installing ${#wheels[@]} wheels from $WHEELS into $SITE"
    timeout "$INSTALL_TIMEOUT" "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "${wheels[@]}" || { echo "error: installing $WHEELS failed (above)" >&2; exit 2; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
elif ! "$PYTHON" -c "import diffusers" 2>/dev/null; then
    echo "error: diffusers is not importable and $WHEELS holds no wheels: prepare them as the top of $0 says" >&2
    exit 2
fi
"$PYTHON" -c "import diffusers, huggingface_hub as hub; print('== diffusers', diffusers.__version__, hub.__version__)" \
    || { echo "error: diffusers does not import with these packages (above)" >&2; exit 2; }

echo "== pytest -m cuda (bound ${TESTS_TIMEOUT} s)"
# In one process (-o addopts= drops pyproject's "-n 2"): the GPU machine may lack pytest-xdist, and the report
# reads pytest's one-line-per-test output, which xdist's workers write differently.
timeout -k 5 "$TESTS_TIMEOUT" "$PYTHON" -m pytest -o addopts= -m cuda -v -p no:cacheprovider tests/test_cuda.py 2>&1 \
    | tee "$WORK/pytest.log"
tests_status=${PIPESTATUS[0]}

# What is left of the budget, less 15 s for the report and the parts' start-up, bounds the parts together
# (a dry run has no budget unless DEVICE_CHECK_BUDGET is set: on a busy CPU it may take longer, and it must
# still run every part).
[ -n "$BUDGET" ] || [ ${#DRY_RUN[@]} -gt 0 ] || BUDGET=540
BUDGET_OPTION=()
if [ -n "$BUDGET" ]; then
    parts_budget=$(( BUDGET - SECONDS - 15 ))
    [ "$parts_budget" -ge 0 ] || parts_budget=0
    BUDGET_OPTION=(--time_budget "$parts_budget")
    echo "== benchmarks/device_check.py (the parts within ${parts_budget} s of DEVICE_CHECK_BUDGET=${BUDGET})"
else
    echo "== benchmarks/device_check.py (no time budget)"
fi
"$PYTHON" benchmarks/device_check.py "${DRY_RUN[@]}" --output_dir "$OUTPUT_DIR" "${BUDGET_OPTION[@]}" \
    --pytest_log "$WORK/pytest.log" --pytest_status "$tests_status" --pytest_timeout "$TESTS_TIMEOUT" "$@"
status=$?
echo "== device_check.sh finished in ${SECONDS} s with status $status; log $LOG"
exit $status
