"""Golden pixels: a few fixed samples per engine, their checksums kept in tests/golden/engines.json.

Sample ids carry each engine's algorithm version (`TRANSPLANT_ALGORITHM`, `SDXL_ALGORITHM`), so a
resumed run never mixes shards of two versions, but only if someone bumps the number when the
pixels change. This test fails when they change and the number did not; after a bump it asks for
new checksums (`POLYP_SYNTH_UPDATE_GOLDEN=1 pytest tests/test_golden.py` writes them).

Same pixels means the same bytes on the same kind of machine; elsewhere float rounding may move a few
pixels by a level (README, "Same sample, same pixels"), so where the checksum differs the test
compares 32² thumbnails: no thumbnail pixel more than 2 levels off and a mean under a quarter level
is rounding; anything more (a change confined to the lesion moves its thumbnail pixels by more) is
another algorithm.
"""

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import (
    SDXL_ALGORITHM,
    TRANSPLANT_ALGORITHM,
    EngineConfig,
    TransplantEngineConfig,
)
from pipeline.core.digests import sha256_hex
from pipeline.testing.data import shared_data
from pipeline.testing.golden import SEEDS, golden_inputs

GOLDEN = Path(__file__).parent / "golden" / "engines.json"
KVASIR = shared_data() / "kvasir-seg"


def fingerprint(images: list[np.ndarray]) -> dict:
    return {"sha256": sha256_hex(b"".join(np.ascontiguousarray(i).tobytes() for i in images)),
            "thumbnails": [cv2.resize(i, (32, 32), interpolation=cv2.INTER_AREA).tobytes().hex() for i in images]}


def thumbnails(record: dict) -> np.ndarray:
    return np.array([np.frombuffer(bytes.fromhex(t), np.uint8) for t in record["thumbnails"]], float)


def check(engine: str, algorithm: int, images: list[np.ndarray]) -> None:
    found = fingerprint(images)
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("POLYP_SYNTH_UPDATE_GOLDEN"):
        golden[engine] = {"algorithm": algorithm, **found}
        GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
        return
    kept = golden[engine]
    if found["sha256"] == kept["sha256"]:
        assert algorithm == kept["algorithm"], f"{engine}: same pixels as algorithm {kept['algorithm']}, yet the version says {algorithm}"
        return
    difference = np.abs(thumbnails(found) - thumbnails(kept))
    if difference.max() <= 2 and difference.mean() < 0.25 and algorithm == kept["algorithm"]:
        return  # float rounding on another machine, not another algorithm
    if algorithm == kept["algorithm"]:
        pytest.fail(f"{engine}: the pixels changed (thumbnails differ by {difference.mean():.2f} levels on average) "
                    f"but its algorithm version is still {algorithm}: bump it, then write new checksums "
                    "(POLYP_SYNTH_UPDATE_GOLDEN=1)")
    pytest.fail(f"{engine}: algorithm {algorithm} has no checksums yet (kept: {kept['algorithm']}): write them "
                "with POLYP_SYNTH_UPDATE_GOLDEN=1 pytest tests/test_golden.py")


def test_transplant_pixels_change_only_with_its_algorithm_version(tmp_path):
    from pipeline.generate.transplant.donors import build_donors
    from pipeline.generate.transplant.engine import TransplantEngine

    split = tmp_path / "donors.txt"
    split.write_text("\n".join((KVASIR / "splits" / "train.txt").read_text().split()[:4]))
    build_donors(KVASIR / "images", KVASIR / "masks", str(tmp_path / "donors.parquet"), split)
    engine = TransplantEngine(TransplantEngineConfig(kind="transplant", donors=str(tmp_path / "donors.parquet")))
    frame, mask = golden_inputs(192)
    images = engine.inpaint([frame] * 3, [mask] * 3, [""] * 3, [""] * 3, SEEDS)
    check("transplant", TRANSPLANT_ALGORITHM, images)


def test_sdxl_pixels_change_only_with_its_algorithm_version(tiny_model_dir):
    from pipeline.generate.sdxl import InpaintEngine

    engine = InpaintEngine(EngineConfig(model=str(tiny_model_dir), resolution=64, steps=2, device="cpu",
                                        dtype="float32", batch_size=3))
    frame, mask = golden_inputs(96)
    images = engine.inpaint([frame] * 3, [mask] * 3, ["a sessile polyp"] * 3, [""] * 3, SEEDS)
    check("sdxl (tiny random model, CPU float32)", SDXL_ALGORITHM, images)
