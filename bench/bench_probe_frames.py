"""Can the gate's lesion probe judge a hard negative? Its score on whole frames, by kind of frame.

The probe is a logistic regression on features of Kvasir-SEG lesion crops against crops of the
polyp-free mucosa close-ups (`gate.reference.negatives`). A hard negative has no lesion crop; the
question is whether the probe, run on the whole image, tells a frame with a polyp from one without.
Prints its scores (sorted) on 20 frames of each kind: mucosa close-ups (the probe's own negatives'
dataset, other frames), Kvasir-SEG test images (a polyp in each), and the polyp-free side of the
same test images (`frames polyp-free`: real framings, no polyp).

    python bench/bench_probe_frames.py          # ~2 min on 2 cores: a 60-image reference, 60 frames
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pipeline.gate.features import make_extractor
from pipeline.gate.reference import build_reference, image_files
from pipeline.plan.frames import load_frame
from pipeline.plan.polyp_free import cut_polyp_free_frames
from pipeline.testing.data import require_shared_data

N = 20


def main() -> None:
    data = require_shared_data()
    kvasir = data / "kvasir-seg"
    train = (kvasir / "splits" / "train.txt").read_text().split()
    test = (kvasir / "splits" / "test.txt").read_text().split()
    extractor = make_extractor("efficientnet-lite0", device="cpu")
    with tempfile.TemporaryDirectory() as work:
        ids = Path(work) / "train60.txt"
        ids.write_text("\n".join(train[:60]) + "\n")
        reference = build_reference(str(kvasir / "images"), extractor, str(kvasir / "masks"),
                                    str(data / "normal-mucosa"), limit=60, split=str(ids))
        test_ids = Path(work) / "test.txt"
        test_ids.write_text("\n".join(test[:3 * N]) + "\n")  # not every frame has a polyp-free strip
        cut_polyp_free_frames(str(kvasir / "images"), str(kvasir / "masks"), f"{work}/cut", str(test_ids))
        kinds = {
            "mucosa close-ups (normal-mucosa 600-619)": sorted((data / "normal-mucosa").glob("*.jpg"))[600:600 + N],
            "Kvasir-SEG test images (a polyp each)": [kvasir / "images" / f"{i}.jpg" for i in test[:N]],
            "their polyp-free side (frames polyp-free)": image_files(f"{work}/cut")[:N],
        }
        for name, paths in kinds.items():
            scores = np.sort(reference.probe.score(extractor([load_frame(str(p)) for p in paths])))
            print(f"{name}: n={len(scores)}, median {np.median(scores):.2f}, "
                  f"above 0.5: {int((scores > 0.5).sum())}; {np.round(scores, 2).tolist()}")


if __name__ == "__main__":
    main()
