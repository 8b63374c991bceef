"""PyTorch datasets of image–mask pairs: real folders, exports and shards; real and synthetic mixed."""
