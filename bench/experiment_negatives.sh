#!/usr/bin/env bash
# Hard negatives, measured: the untargeted transplants of bench/experiment_targeted.sh (100 samples
# painted into the polyp-free side of the trials' own 100 real frames) against the same job with
# `negatives: {ratio: 0.25}`. `experiment` compares them seed by seed on Kvasir-SEG test and train ids
# 401-900 (Dice by size, miss rate) and on the polyp-free side of both (false-positive rate). Run
# bench/experiment_targeted.sh first (it makes the real subset, the hosts and the untargeted set).
#   replaced (default): same seed and count, 100 samples: about one in five becomes a polyp-free frame or
#     a frame with a look-alike, the rest are the very same polyp samples; trained at ratio 1.
#   added: 125 samples from the same seed, about 100 polyps (the first 100 indices' polyps are the
#     untargeted set's) and 25 negatives, trained at ratio 1.25 against the untargeted set at 1.25 (its
#     100 cycled): negatives in place of repeated polyps, not of distinct ones.
#   kinds: which negative helps: the added set twice, its negatives all polyp-free frames (`kinds: [frame]`)
#     or all look-alikes (`kinds: [lookalike]`). The same samples are negatives in both, and the polyps are
#     the same 96, so the two arms differ only in what the negatives show.
#   ratio: the added set with `negatives.ratio: 0.1` (about 11 negatives in 125; a sample negative at 0.1 is
#     negative at 0.25 too, the rest are polyps), trained at ratio 1.25: fewer negatives for more polyps.
# Results: runs/exp/negatives[-added|-kinds|-ratio]-<SIZE>-e<EPOCHS>-s<SEEDS>/.
# Usage: bench/experiment_negatives.sh [SIZE] [EPOCHS] [SEEDS] [replaced|added|kinds|ratio]
set -euo pipefail
SIZE=${1:-128} EPOCHS=${2:-8} SEEDS=${3:-5} MODE=${4:-replaced} BIN=.venv/bin KVASIR=../shared/data/kvasir-seg
case $MODE in
    replaced) RUN=exp-negatives-n100 SAMPLES=100 RATIO=1 OUT=negatives ;;
    added) RUN=exp-negatives-added-n125 SAMPLES=125 RATIO=1.25 OUT=negatives-added ;;
    kinds) SAMPLES=125 RATIO=1.25 OUT=negatives-kinds ;;
    ratio) SAMPLES=125 RATIO=1.25 OUT=negatives-ratio ;;
    *) echo "usage: $0 [SIZE] [EPOCHS] [SEEDS] [replaced|added|kinds|ratio]" >&2; exit 2 ;;
esac
negatives() {  # $1: run id, $2: kinds (YAML), $3: negatives' ratio; paints the job into runs/$1
    $BIN/polyp-synth generate jobs/experiment-targeted.yaml --set run_id="$1" --set samples=$SAMPLES \
        --set negatives.ratio="${3:-0.25}" --set negatives.kinds="$2"
}
if [ "$MODE" = kinds ]; then
    negatives exp-negatives-frame-n125 "[frame]"
    negatives exp-negatives-lookalike-n125 "[lookalike]"
    ARMS=(--synthetic frames=runs/exp-negatives-frame-n125 --synthetic lookalikes=runs/exp-negatives-lookalike-n125)
elif [ "$MODE" = ratio ]; then
    negatives exp-negatives-r0.1-n125 "[frame, lookalike]" 0.1
    ARMS=(--synthetic fewer-negatives=runs/exp-negatives-r0.1-n125)
else
    negatives $RUN "[frame, lookalike]"
    ARMS=(--synthetic untargeted=runs/exp-untargeted-n100 --synthetic negatives=runs/$RUN)
fi
[ -d runs/exp/heldout-polyp-free ] || $BIN/polyp-synth frames polyp-free --images "$KVASIR/images" \
    --masks "$KVASIR/masks" --split runs/exp/heldout-401.txt --out runs/exp/heldout-polyp-free
$BIN/polyp-synth experiment --real "$KVASIR:train" --real-n 100 \
    "${ARMS[@]}" --ratios 0,$RATIO --seeds "$SEEDS" --eval "$KVASIR:test" --eval "$KVASIR:runs/exp/heldout-401.txt" \
    --eval-negatives runs/exp/test-polyp-free --eval-negatives runs/exp/heldout-polyp-free \
    --size "$SIZE" --epochs "$EPOCHS" --batch-size 8 --out "runs/exp/$OUT-$SIZE-e$EPOCHS-s$SEEDS"
