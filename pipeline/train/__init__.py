"""Training: the reference segmentation trainer and the generator fine-tuning (finetune/)."""
