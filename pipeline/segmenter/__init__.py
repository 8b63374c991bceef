"""The reference segmenter: a U-Net on an offline pretrained encoder, its checkpoints, how it predicts
and how a prediction is scored. Below the gate (its label check) and the trainer, which both use it."""
