"""polyp-synth: labelled synthetic training data for colonoscopy polyp segmentation."""

__version__ = "0.1.0"
