"""`polyp-synth finetune`: a LoRA for the SDXL inpainting UNet, trained on a team's own labelled polyps.

    config.py     the typed job (jobs/finetune.yaml)
    data.py       image/mask pairs, the training and validation split, captions
    objective.py  the inpainting loss (noise or v target, min-SNR weights)
    trainer.py    one training process: cached inputs, steps, checkpoints, validation sheets, the LoRA file
    distributed.py  Ray Train data parallel (one worker per GPU) around the same training process
"""
