#!/usr/bin/env bash
# The experiment at the scale a 2-core CPU allows: does transplant data (gated and ungated) help a
# U-Net trained on only 50 real Kvasir-SEG images? Donors come only from those 50 images (fair by
# construction); evaluated on the 100-image Kvasir-SEG test split. Results: runs/exp/result/
# (table.md, plot.png, summary.json, trials.jsonl — rerun the script to resume).
# Usage: bench/experiment_transplant.sh [SIZE] [EPOCHS] [SEEDS] [RATIOS]
# (BENCHMARKS.md: `bench/experiment_transplant.sh 96 8 3 0,1` on the 2-core CI machine)
set -euo pipefail
SIZE=${1:-128}
EPOCHS=${2:-10}
SEEDS=${3:-3}
RATIOS=${4:-0,1,2}
BIN=.venv/bin
KVASIR=../shared/data/kvasir-seg
mkdir -p runs/exp
head -n 50 "$KVASIR/splits/train.txt" > runs/exp/subset-50.txt     # the trials' real images (--real-n 50)
sed -n 51,350p "$KVASIR/splits/train.txt" > runs/exp/reference-ids.txt  # the gate's reference: disjoint from both
$BIN/polyp-synth run jobs/experiment-transplant.yaml   # generate (donors from subset-50.txt only) → gate
$BIN/polyp-synth export runs/exp-transplant-n50 --out runs/exp/gated
$BIN/polyp-synth export runs/exp-transplant-n50 --out runs/exp/ungated --include-rejected
$BIN/polyp-synth experiment --real "$KVASIR:train" --real-n 50 \
    --synthetic gated=runs/exp/gated --synthetic ungated=runs/exp/ungated \
    --ratios "$RATIOS" --seeds "$SEEDS" --eval "$KVASIR:test" --size "$SIZE" --epochs "$EPOCHS" --batch-size 8 \
    --out runs/exp/result
