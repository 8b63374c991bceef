"""Test helpers, for the tests and the benchmarks only: where the real data lives, runs made of real
images. The product never imports this package (tests/test_layout.py checks), and wheels leave it out."""
