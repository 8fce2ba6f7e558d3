#!/usr/bin/env bash
# Every GPU measurement of bench/RESULTS.md "GPU: to measure", in one call, figures in one log.
#
#   bench/gpu.sh [--dry-run] [--log FILE] [--budget SECONDS]
#
# Run from the repository root on a machine with one CUDA GPU. The whole script keeps within --budget
# (default 470 s: it is sized for 8 minutes on an H100, checkpoints written on the way): each step runs
# under `timeout` with its own cap or what is left of the budget, whichever is less, and a step that
# no longer fits is logged as not run. Steps go in order of what is most wanted: the Stable Audio 3
# small targets (eager and compiled: the whole DiT forward under CUDA graphs, mode="reduce-overhead";
# bfloat16), the pool's per-request estimate against the allocator's peak, the CUDA correctness tests
# (MusicGen's CUDA graphs, the compiled DiT within 1e-4 of eager in float32), MusicGen's targets, then
# the larger models. Every command line, its exit
# status, its time and its output go to the log (default $OUT/gpu.log where $OUT is set, else
# bench/gpu-DATE.log); `grep -E '^(seconds_per_take|compiled_over_eager|conform_share|request_memory)|x real
# time|time to first bar' LOG` pulls the figures.
#
# --dry-run prints every command and checks each one's arguments parse (bench/argcheck.py; pytest's
# collection for the tests), running nothing else; tests/test_gpu_script.py runs it.
#
# Python: $PYTHON, else .venv/bin/python, else python3 (a lent device machine: its python3 has torch;
# stemd is installed into it in editable mode first when it cannot be imported).
set -u
cd "$(dirname "$0")/.."

DRY=0
BUDGET=470
LOG=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --log) LOG="$2"; shift ;;
        --budget) BUDGET="$2"; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "bench/gpu.sh: unknown argument $1 (--dry-run, --log FILE, --budget SECONDS)" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
if [ -z "$LOG" ]; then
    if [ -n "${OUT:-}" ]; then LOG="$OUT/gpu.log"; else LOG="bench/gpu-$(date -u +%Y%m%d-%H%M).log"; fi
fi

# name | cap in seconds | command (run from the repository root)
STEPS=(
"sa3-small 8-bar take, eager and compiled, bfloat16, with its memory|150|$PY bench/diffusion.py --device cuda --dtype bfloat16 --arch sa3-small --bars 8 --rounds 5 --backend compiled --memory"
"sa3-small 8 variations of 8 bars, eager and compiled|90|$PY bench/diffusion.py --device cuda --dtype bfloat16 --arch sa3-small --bars 8 --variations 8 --rounds 3 --backend compiled --memory"
"CUDA graphs against eager (MusicGen correctness)|60|$PY -m pytest -q -x tests/test_fast_decode.py tests/test_fast_decode_onnx.py"
"the compiled DiT (whole forward, reduce-overhead) within 1e-4 of eager, float32|60|$PY -m pytest -q -x tests/test_diffusion_compiled.py -k cuda"
"MusicGen steps/s per backend, float32|45|$PY bench/fast_decode.py --device cuda --steps 50 --rounds 3"
"MusicGen steps/s per backend, bfloat16|45|$PY bench/fast_decode.py --device cuda --dtype bfloat16 --steps 50 --rounds 3"
"musicgen-small 30x real time, 8 variations 150x|70|$PY bench/decode.py --device cuda --backend cuda-graph --variations 8 --steps 100 --rounds 3"
"first bar at a stemd serve client within 150 ms|60|$PY bench/daemon.py --models bench/.cache/musicgen-small-random --device cuda --backend cuda-graph --runs 10 --rounds 2"
"what auto picks on CUDA|40|$PY bench/decode.py --device cuda --backend auto --variations 8 --steps 50 --rounds 2"
"pool on CUDA: cold against warm first bar|70|$PY bench/models.py --device cuda --arch musicgen-small sa3-small acestep-turbo --rounds 2"
"sa3-medium and acestep-turbo against diffusers, eager and compiled|90|$PY bench/diffusion.py --device cuda --dtype bfloat16 --arch sa3-medium acestep-turbo --rounds 3 --backend compiled --memory"
"musicgen-large 8x real time|90|$PY bench/decode.py --device cuda --backend cuda-graph --arch musicgen-large --steps 50 --rounds 2"
)

check() {   # the arguments of one command parse (nothing is measured)
    local cmd="$1"
    set -- $cmd
    local py="$1"; shift
    if [ "$1" = "-m" ] && [ "$2" = "pytest" ]; then
        shift 2
        "$py" -m pytest --collect-only -q "$@" >/dev/null
    else
        "$py" bench/argcheck.py "$@" >/dev/null
    fi
}

if [ "$DRY" = 1 ]; then
    bad=0
    for step in "${STEPS[@]}"; do
        IFS='|' read -r name cap cmd <<< "$step"
        echo "[$name] (at most ${cap} s) $cmd"
        if check "$cmd"; then echo "  arguments parse"; else echo "  ARGUMENTS DO NOT PARSE"; bad=1; fi
    done
    exit $bad
fi

mkdir -p "$(dirname "$LOG")"
start=$(date +%s)
{
    echo "bench/gpu.sh on $(date -u '+%Y-%m-%d %H:%M UTC'), budget ${BUDGET} s, python $PY"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "nvidia-smi: none"
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')" 2>&1
} | tee "$LOG"
if ! "$PY" -c "import stemd" 2>/dev/null; then
    echo "installing stemd into $PY (editable, no dependencies)" | tee -a "$LOG"
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1
fi
for step in "${STEPS[@]}"; do
    IFS='|' read -r name cap cmd <<< "$step"
    left=$(( BUDGET - ($(date +%s) - start) ))
    limit=$(( cap < left ? cap : left ))
    if [ "$limit" -lt 20 ]; then
        echo "=== [$name] not run: $left s of the budget left" | tee -a "$LOG"
        continue
    fi
    echo "=== [$name] (at most $limit s) $cmd" | tee -a "$LOG"
    t0=$(date +%s)
    timeout --kill-after=5 "$limit" $cmd >>"$LOG" 2>&1
    rc=$?
    echo "=== [$name] exit $rc after $(( $(date +%s) - t0 )) s$([ $rc = 124 ] && echo ' (stopped at its time limit)')" | tee -a "$LOG"
done
echo "=== all steps in $(( $(date +%s) - start )) s; figures in $LOG" | tee -a "$LOG"
