#!/usr/bin/env bash
# The closed loop, measured: real only (the first 100 Kvasir-SEG training images) → evaluation by lesion
# size on train ids 101-400 (images no trial, donor, host or evaluation uses) → a plan aimed at the bins
# the model fails in (`targets.from_evaluation`) → targeted vs untargeted transplants of the same count
# (same seed, frames, donors and settings; only the size distribution differs) → `experiment` on
# Kvasir-SEG test and train ids 401-900, with the false-positive rate on the polyp-free side of the test
# frames. Results: runs/exp/targeted-<SIZE>-e<EPOCHS>-s<SEEDS>/ (rerun the script to resume).
# Usage: bench/experiment_targeted.sh [SIZE] [EPOCHS] [SEEDS]
set -euo pipefail
SIZE=${1:-128}
EPOCHS=${2:-8}
SEEDS=${3:-5}
BIN=.venv/bin
KVASIR=../shared/data/kvasir-seg
mkdir -p runs/exp
head -n 100 "$KVASIR/splits/train.txt" > runs/exp/subset-100.txt       # the trials' real images (--real-n 100)
sed -n 101,400p "$KVASIR/splits/train.txt" > runs/exp/targets-ids.txt   # where the targets are measured
sed -n 401,900p "$KVASIR/splits/train.txt" > runs/exp/heldout-401.txt   # evaluation, with the test split
[ -d runs/exp/test-polyp-free ] || $BIN/polyp-synth frames polyp-free --images "$KVASIR/images" \
    --masks "$KVASIR/masks" --split "$KVASIR/splits/test.txt" --out runs/exp/test-polyp-free
[ -d runs/exp/hosts-100 ] || $BIN/polyp-synth frames polyp-free --images "$KVASIR/images" \
    --masks "$KVASIR/masks" --split runs/exp/subset-100.txt --out runs/exp/hosts-100
# 1. real only, trained as the experiment's real-only arm; evaluated by bin where no trial looks
[ -f runs/exp/real-100.safetensors ] || $BIN/polyp-synth train --real "$KVASIR:runs/exp/subset-100.txt" \
    --size "$SIZE" --epochs "$EPOCHS" --batch-size 8 --seed 0 --out runs/exp/real-100.safetensors
[ -f runs/exp/real-100-eval.json ] || $BIN/polyp-synth evaluate runs/exp/real-100.safetensors \
    --data "$KVASIR:runs/exp/targets-ids.txt" --json runs/exp/real-100-eval.json
# 2. the same job twice: untargeted, then aimed at the weakest bins
$BIN/polyp-synth generate jobs/experiment-targeted.yaml
$BIN/polyp-synth generate jobs/experiment-targeted.yaml --set run_id=exp-targeted-n100 \
    --set targets.from_evaluation=runs/exp/real-100-eval.json
$BIN/polyp-synth preview --config jobs/experiment-targeted.yaml --set run_id=exp-targeted-n100 \
    --set targets.from_evaluation=runs/exp/real-100-eval.json --out runs/exp/targeted-preview.png
# 3. does aiming help? real only, its compute control, both sets at equal epochs and equal steps, and
#    targeted held against untargeted (the reference: named first) seed by seed
$BIN/polyp-synth experiment --real "$KVASIR:train" --real-n 100 \
    --synthetic untargeted=runs/exp-untargeted-n100 --synthetic targeted=runs/exp-targeted-n100 \
    --ratios 0,1 --seeds "$SEEDS" --eval "$KVASIR:test" --eval "$KVASIR:runs/exp/heldout-401.txt" \
    --eval-negatives runs/exp/test-polyp-free --size "$SIZE" --epochs "$EPOCHS" --batch-size 8 \
    --out "runs/exp/targeted-$SIZE-e$EPOCHS-s$SEEDS"
