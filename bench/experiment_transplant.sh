#!/usr/bin/env bash
# The experiment at the scale a 2-core CPU allows: does transplant data (gated and ungated) help a
# U-Net trained on only 50 real Kvasir-SEG images? Donors come only from those 50 images (fair by
# construction); evaluated on the 100-image Kvasir-SEG test split. Results: runs/exp/result[-framed]/
# (table.md, plot.png, summary.json, trials.jsonl — rerun the script to resume).
# HOSTS: mucosa (the 256² polyp-free close-ups) or framed (the polyp-free side of the same 50 labelled
# frames, `polyp-synth frames polyp-free`: real framing, still no image beyond the 50).
# Usage: bench/experiment_transplant.sh [SIZE] [EPOCHS] [SEEDS] [RATIOS] [HOSTS]
# (BENCHMARKS.md: `bench/experiment_transplant.sh 96 8 3 0,1,2 mucosa|framed` on the 2-core dev machine)
set -euo pipefail
SIZE=${1:-128}
EPOCHS=${2:-10}
SEEDS=${3:-3}
RATIOS=${4:-0,1,2}
HOSTS=${5:-mucosa}
BIN=.venv/bin
KVASIR=../shared/data/kvasir-seg
mkdir -p runs/exp
head -n 50 "$KVASIR/splits/train.txt" > runs/exp/subset-50.txt     # the trials' real images (--real-n 50)
sed -n 51,350p "$KVASIR/splits/train.txt" > runs/exp/reference-ids.txt  # the gate's reference: disjoint from both
RUN=runs/exp-transplant-n50 SUFFIX= SETTINGS=()
if [ "$HOSTS" = framed ]; then
    $BIN/polyp-synth frames polyp-free --images "$KVASIR/images" --masks "$KVASIR/masks" \
        --split runs/exp/subset-50.txt --out runs/exp/hosts-50
    RUN=runs/exp-transplant-n50-framed SUFFIX=-framed
    SETTINGS=(--set run_id=exp-transplant-n50-framed --set frames.source=runs/exp/hosts-50 --set engine.output_resolution=null)
fi
$BIN/polyp-synth run jobs/experiment-transplant.yaml "${SETTINGS[@]}"   # generate (donors from subset-50.txt only) → gate
$BIN/polyp-synth export "$RUN" --out "runs/exp/gated$SUFFIX"
$BIN/polyp-synth export "$RUN" --out "runs/exp/ungated$SUFFIX" --include-rejected
$BIN/polyp-synth experiment --real "$KVASIR:train" --real-n 50 \
    --synthetic gated="runs/exp/gated$SUFFIX" --synthetic ungated="runs/exp/ungated$SUFFIX" \
    --ratios "$RATIOS" --seeds "$SEEDS" --eval "$KVASIR:test" --size "$SIZE" --epochs "$EPOCHS" --batch-size 8 \
    --out "runs/exp/result$SUFFIX"
