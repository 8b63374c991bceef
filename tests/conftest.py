"""Shared pytest fixtures."""

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random SDXL inpainting pipeline (9-channel UNet), built once per test session."""
    from pipeline.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sdxl-inpaint")
