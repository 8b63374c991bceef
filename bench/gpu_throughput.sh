#!/usr/bin/env bash
# The GPU benchmarks BENCHMARKS.md prepares, as one device command that fits one lease:
#   1. the throughput table (baseline, engine, -sdpa, -batched-cfg, then bf16, fuse_qkv, channels_last,
#      regional compile, overlap, cumulative) on 16 normal-mucosa frames, 1024², 30 steps, batch 8;
#   2. crop vs frame at equal settings (engine row, fp16) on 16 of the 48 carried Kvasir-SEG frames, where windows are
#      smaller than the frame.
# Each part has its own time limit; the harness rewrites its JSON after every row, so a part cut
# short keeps what it measured. Everything lands in OUT (log.txt, one JSON per part).
#
# On a lent GPU (carry [".whl", ".frames", ".kvasir"], prepared as BENCHMARKS.md says):
#     bash bench/gpu_throughput.sh "$OUT" 560
# Dry run of the same script on a CPU with the tiny model (extra arguments reach every harness call):
#     bash bench/gpu_throughput.sh /tmp/out 600 --tiny --n 2 --batch 2 --resolution 64 \
#         --output-resolution 128 --steps 2 --crop-min 64 --crop-resolution 64
set -u -o pipefail
out=${1:?usage: gpu_throughput.sh OUT SECONDS [harness arguments]}
budget=${2:?usage: gpu_throughput.sh OUT SECONDS [harness arguments]}
shift 2
start=$SECONDS
mkdir -p "$out"
log="$out/log.txt"

left() { echo $((budget - (SECONDS - start))); }

# part NAME SECONDS harness-arguments…: one harness process, stopped after SECONDS
part() {
    local name=$1 seconds=$2
    shift 2
    if ((seconds < 30)); then
        echo "== $name: skipped, ${seconds}s left" | tee -a "$log"
        return
    fi
    echo "== $name (at most ${seconds}s): $*" | tee -a "$log"
    timeout --kill-after=10 "$seconds" python3 bench/bench_sdxl_throughput.py --cache /tmp "$@" \
        --json "$out/$name.json" 2>&1 | tee -a "$log"
    echo "== $name: exit $? after $((SECONDS - start))s" | tee -a "$log"
}

if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}.:bench PYTHONUNBUFFERED=1
{
    date -u
    nvidia-smi -L 2>/dev/null || echo "no GPU"
    python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$log"

# the crop table needs about two engine rows; the main table gets the rest
part throughput $(($(left) - 130)) --frames .frames --n 16 --batch 8 --no-sdpa --split-cfg \
    --bf16 --fuse-qkv --channels-last --compile regional --overlap "$@"
part frame $((($(left) - 5) / 2)) --frames .kvasir --n 16 --batch 8 --skip-baseline --region frame "$@"
part crop $(($(left) - 5)) --frames .kvasir --n 16 --batch 8 --skip-baseline --region crop --crop-resolution 768 "$@"
