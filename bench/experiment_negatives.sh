#!/usr/bin/env bash
# Hard negatives, measured: the untargeted transplants of bench/experiment_targeted.sh (100 samples
# painted into the polyp-free side of the trials' own 100 real frames) against the same job with
# `negatives: {ratio: 0.25}` (same seed and count: about one sample in five becomes a polyp-free frame
# or a frame with a look-alike, the rest are the very same polyp samples). `experiment` compares them
# seed by seed on Kvasir-SEG test and train ids 401-900 (Dice by size, miss rate) and on the polyp-free
# side of both (false-positive rate). Run bench/experiment_targeted.sh first (it makes the real subset,
# the hosts and the untargeted set). Results: runs/exp/negatives-<SIZE>-e<EPOCHS>-s<SEEDS>/.
# Usage: bench/experiment_negatives.sh [SIZE] [EPOCHS] [SEEDS]
set -euo pipefail
SIZE=${1:-128} EPOCHS=${2:-8} SEEDS=${3:-5} BIN=.venv/bin KVASIR=../shared/data/kvasir-seg   # as experiment_targeted.sh
[ -d runs/exp/heldout-polyp-free ] || $BIN/polyp-synth frames polyp-free --images "$KVASIR/images" \
    --masks "$KVASIR/masks" --split runs/exp/heldout-401.txt --out runs/exp/heldout-polyp-free
$BIN/polyp-synth generate jobs/experiment-targeted.yaml --set run_id=exp-negatives-n100 --set negatives.ratio=0.25
$BIN/polyp-synth experiment --real "$KVASIR:train" --real-n 100 \
    --synthetic untargeted=runs/exp-untargeted-n100 --synthetic negatives=runs/exp-negatives-n100 \
    --ratios 0,1 --seeds "$SEEDS" --eval "$KVASIR:test" --eval "$KVASIR:runs/exp/heldout-401.txt" \
    --eval-negatives runs/exp/test-polyp-free --eval-negatives runs/exp/heldout-polyp-free \
    --size "$SIZE" --epochs "$EPOCHS" --batch-size 8 --out "runs/exp/negatives-$SIZE-e$EPOCHS-s$SEEDS"
