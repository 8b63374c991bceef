#!/usr/bin/env bash
# Real masks against procedural ones, measured: the untargeted transplants of
# bench/experiment_targeted.sh (100 samples painted into the polyp-free side of the trials' own 100
# real frames, procedural masks) against the same job with `masks.source: real` (the labels of those
# same 100 training images, flipped, turned, scaled to the planned size and placed in the field of
# view; same seed, frames, donors, prompts and sizes). `experiment` holds real masks against procedural
# ones seed by seed on Kvasir-SEG test and train ids 401-900 (Dice by size, miss rate, false positives
# on the polyp-free side of the test frames). Results: runs/exp/realmasks-<SIZE>-e<EPOCHS>-s<SEEDS>/.
# Usage: bench/experiment_real_masks.sh [SIZE] [EPOCHS] [SEEDS]
set -euo pipefail
SIZE=${1:-128} EPOCHS=${2:-8} SEEDS=${3:-5} BIN=.venv/bin KVASIR=../shared/data/kvasir-seg   # as experiment_targeted.sh
mkdir -p runs/exp
head -n 100 "$KVASIR/splits/train.txt" > runs/exp/subset-100.txt       # the trials' real images (--real-n 100)
sed -n 401,900p "$KVASIR/splits/train.txt" > runs/exp/heldout-401.txt   # evaluation, with the test split
[ -d runs/exp/test-polyp-free ] || $BIN/polyp-synth frames polyp-free --images "$KVASIR/images" \
    --masks "$KVASIR/masks" --split "$KVASIR/splits/test.txt" --out runs/exp/test-polyp-free
[ -d runs/exp/hosts-100 ] || $BIN/polyp-synth frames polyp-free --images "$KVASIR/images" \
    --masks "$KVASIR/masks" --split runs/exp/subset-100.txt --out runs/exp/hosts-100
$BIN/polyp-synth generate jobs/experiment-targeted.yaml
$BIN/polyp-synth generate jobs/experiment-targeted.yaml --set run_id=exp-realmasks-n100 --set masks.source=real \
    --set "masks.real={labelled: {images: $KVASIR/images, masks: $KVASIR/masks, split: runs/exp/subset-100.txt}}"
$BIN/polyp-synth preview runs/exp-realmasks-n100 --n 16 --out runs/exp/realmasks-preview.png
$BIN/polyp-synth experiment --real "$KVASIR:train" --real-n 100 \
    --synthetic procedural=runs/exp-untargeted-n100 --synthetic real-masks=runs/exp-realmasks-n100 \
    --ratios 0,1 --seeds "$SEEDS" --eval "$KVASIR:test" --eval "$KVASIR:runs/exp/heldout-401.txt" \
    --eval-negatives runs/exp/test-polyp-free --size "$SIZE" --epochs "$EPOCHS" --batch-size 8 \
    --out "runs/exp/realmasks-$SIZE-e$EPOCHS-s$SEEDS"
