#!/usr/bin/env bash
# The experiment at the scale a 2-core CPU allows: does transplant data (gated and ungated) help a
# U-Net trained on only 50 real Kvasir-SEG images? Donors come only from those 50 images (fair by
# construction), the gate's reference from train ids 51-350. Evaluated on the 100-image Kvasir-SEG
# test split and on train ids 351-900 (used by nothing else: many more small polyps), with the
# false-positive rate on the polyp-free side of the test frames. Results:
# runs/exp/<HOSTS>-<SIZE>-e<EPOCHS>-s<SEEDS>/ (table.md, plot.png, summary.json, trials.jsonl — rerun
# the script to resume).
# HOSTS: mucosa (the 256² polyp-free close-ups) or framed (the polyp-free side of the same 50 labelled
# frames, `polyp-synth frames polyp-free`: real framing, still no image beyond the 50).
# Usage: bench/experiment_transplant.sh [SIZE] [EPOCHS] [SEEDS] [RATIOS] [HOSTS]
# (BENCHMARKS.md: `bench/experiment_transplant.sh 128 8 5 0,1,2 framed` on the 2-core dev machine)
set -euo pipefail
SIZE=${1:-128}
EPOCHS=${2:-8}
SEEDS=${3:-5}
RATIOS=${4:-0,1,2}
HOSTS=${5:-framed}
BIN=.venv/bin
KVASIR=../shared/data/kvasir-seg
mkdir -p runs/exp
head -n 50 "$KVASIR/splits/train.txt" > runs/exp/subset-50.txt     # the trials' real images (--real-n 50)
sed -n 51,350p "$KVASIR/splits/train.txt" > runs/exp/reference-ids.txt  # the gate's reference: disjoint from both
sed -n 351,900p "$KVASIR/splits/train.txt" > runs/exp/heldout-ids.txt  # evaluation: no trial, donor, host or reference uses them
[ -d runs/exp/test-polyp-free ] || $BIN/polyp-synth frames polyp-free --images "$KVASIR/images" \
    --masks "$KVASIR/masks" --split "$KVASIR/splits/test.txt" --out runs/exp/test-polyp-free  # false positives
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
    --ratios "$RATIOS" --seeds "$SEEDS" --eval "$KVASIR:test" --eval "$KVASIR:runs/exp/heldout-ids.txt" \
    --eval-negatives runs/exp/test-polyp-free --size "$SIZE" --epochs "$EPOCHS" --batch-size 8 \
    --out "runs/exp/$HOSTS-$SIZE-e$EPOCHS-s$SEEDS"
