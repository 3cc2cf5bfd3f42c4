#!/usr/bin/env bash
# The GPU quickstart in one call (issue 29): on a machine with one CUDA GPU, 16 cores and no network, within
# 9 minutes, python quickstart.py --budget gpu records DOOM on the cores (PPO on 12 games, then 14 worker
# processes), trains the small preset's autoencoder and world model (128x96 frames) on the GPU for fixed times,
# distils a 1-step student, evaluates both against the baselines and rolls them out.
#
#   bash benchmarks/gpu_pipeline.sh [--dry_run] [--output_dir DIR] [--run_dir DIR] [--wheels DIR]
#                                   [-- quickstart.py options]
#
# 1. Installs the wheels of the wheel folder (default .whl/ in the repository root, kept out of git; --wheels or
#    GPU_PIPELINE_WHEELS) into /tmp/gpu_pipeline_site and puts it on PYTHONPATH; then checks that diffusers,
#    vizdoom, stable_baselines3 and gymnasium import.
# 2. Runs the quickstart's gpu budget into the run folder (--run_dir; default a temporary folder, deleted at the
#    end; a folder given is kept, and a second call continues its unfinished stages), bounded by what is left of
#    GPU_PIPELINE_BUDGET seconds (default 530: the script ends within 9 minutes, inside one 10-minute device call).
# 3. benchmarks/gpu_pipeline.py writes into DIR (--output_dir, else $OUT when set, else
#    benchmarks/results/gpu_pipeline): metrics.json, report.md, examples.png (the evaluation), rollout.gif (the
#    world model's 64 frames beside the real ones, recorded actions), gpu_pipeline.md (the quickstart's summary and
#    the issue's goals, met or not), gpu_pipeline.json, gpu_pipeline.log (everything printed) and
#    gpu_pipeline_extras.tar.gz (the other gifs, training summaries and samples, the stage logs). A stage that did
#    not finish in time is recorded as such, with what the earlier ones made.
#
# --dry_run: quickstart.py --budget gpu-smoke on the CPU: the same stages and options (fixed training times, worker
# processes, the uncompiled engine) at the smoke sizes with the tiny preset, into
# benchmarks/results/gpu_pipeline_dry_run unless told otherwise. It tests the script; CI runs it.
#
# Preparing the wheel folder (once, on a machine with PyPI; the GPU machine has python 3.12, torch, transformers,
# accelerate, huggingface_hub 1.x, pandas, matplotlib, tensorboard, cloudpickle, imageio, but not these):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==10.2.0 zipp==4.1.2 \
#       lazy-importer==0.1.0 vizdoom==1.3.2 gymnasium==1.4.0 farama-notifications==0.0.6 stable_baselines3==2.9.2
#
# About 46 MB (vizdoom 39 MB, with its freedoom WADs), with the repository's 2.5 MB under the 64 MiB that travels.
# vizdoom also names pygame-ce, which only its window needs: the recording runs headless without it.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHEELS="${GPU_PIPELINE_WHEELS:-$REPO/.whl}"
SITE="${GPU_PIPELINE_SITE:-/tmp/gpu_pipeline_site}"
BUDGET="${GPU_PIPELINE_BUDGET:-}"
INSTALL_TIMEOUT="${GPU_PIPELINE_INSTALL_TIMEOUT:-30}"
OUTPUT_DIR="${OUT:-}"
RUN_DIR=""
DRY_RUN=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry_run) DRY_RUN=1; shift ;;
        --output_dir) OUTPUT_DIR="${2:?--output_dir needs a folder}"; shift 2 ;;
        --run_dir) RUN_DIR="${2:?--run_dir needs a folder}"; shift 2 ;;
        --wheels) WHEELS="${2:?--wheels needs a folder}"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown option $1 (quickstart.py options go after --; see --help)" >&2; exit 2 ;;
    esac
done

STEM="gpu_pipeline${DRY_RUN:+_dry_run}"
OUTPUT_DIR="${OUTPUT_DIR:-$REPO/benchmarks/results/$STEM}"
QUICKSTART_BUDGET="gpu"
[ -z "$DRY_RUN" ] || QUICKSTART_BUDGET="gpu-smoke"
[ -n "$BUDGET" ] || [ -n "$DRY_RUN" ] || BUDGET=530
mkdir -p "$OUTPUT_DIR" || exit 2
LOG="$OUTPUT_DIR/gpu_pipeline.log"
WORK="$(mktemp -d)"
if [ -z "$RUN_DIR" ]; then
    RUN_DIR="$WORK/run"
fi
trap 'rm -rf "$WORK"' EXIT
# Everything below goes to the terminal and to the log.
exec > >(tee "$LOG") 2>&1

cd "$REPO" || exit 2
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
echo "== gpu_pipeline.sh: $(date -u +%Y-%m-%dT%H:%M:%SZ), $("$PYTHON" --version 2>&1), budget $QUICKSTART_BUDGET," \
    "run folder $RUN_DIR, output $OUTPUT_DIR"

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
    echo "== installing ${#wheels[@]} wheels from $WHEELS into $SITE"
    timeout "$INSTALL_TIMEOUT" "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "${wheels[@]}" || { echo "error: installing $WHEELS failed (above)" >&2; exit 2; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" -c "import diffusers, vizdoom, stable_baselines3, gymnasium; print('== diffusers', diffusers.__version__, \
'vizdoom', vizdoom.__version__, 'stable_baselines3', stable_baselines3.__version__)" || {
    echo "error: a package the pipeline needs does not import (above): prepare the wheels as the top of $0 says" >&2
    exit 2
}
if [ -z "$DRY_RUN" ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/== GPU: /'
fi

# The quickstart gets what is left of the budget, less 20 s for collecting the results.
BOUND=()
if [ -n "$BUDGET" ]; then
    left=$(( BUDGET - SECONDS - 20 ))
    [ "$left" -ge 30 ] || left=30
    BOUND=(timeout -k 10 "$left")
    echo "== quickstart.py --budget $QUICKSTART_BUDGET (bound ${left} s of GPU_PIPELINE_BUDGET=${BUDGET})"
else
    echo "== quickstart.py --budget $QUICKSTART_BUDGET (no time bound)"
fi
started=$SECONDS
"${BOUND[@]}" "$PYTHON" quickstart.py --budget "$QUICKSTART_BUDGET" --output_dir "$RUN_DIR" "$@"
status=$?
echo "== quickstart.py ended with status $status after $(( SECONDS - started )) s"

"$PYTHON" benchmarks/gpu_pipeline.py --run_dir "$RUN_DIR" --output_dir "$OUTPUT_DIR" --status "$status" \
    --seconds "$(( SECONDS - started ))" --budget "$QUICKSTART_BUDGET" ${BUDGET:+--time_bound "$BUDGET"}
collected=$?
echo "== gpu_pipeline.sh finished in ${SECONDS} s (quickstart status $status); log $LOG"
[ "$status" -eq 0 ] || exit "$status"
exit $collected
