"""Polyp-free frames cut from real labelled Kvasir-SEG frames: the strip chosen, what is written, errors."""

import cv2
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.core.labelled import binary_label
from pipeline.errors import ConfigError, FrameCatalogError
from pipeline.plan.polyp_free import StripRule, cut_polyp_free_frames, polyp_free_strip
from pipeline.testing.data import shared_data

KVASIR = shared_data() / "kvasir-seg"
TRAIN = (KVASIR / "splits/train.txt").read_text().split()


def test_the_largest_strip_clear_of_every_lesion():
    label = np.zeros((400, 600), bool)
    label[100:200, 50:150] = True  # a lesion on the left: the right-hand strip is the largest
    gap = int(0.03 * 600) + 4
    assert polyp_free_strip(label) == (150 + gap, 0, 600, 400)
    assert polyp_free_strip(np.zeros((400, 600), bool)) == (0, 0, 600, 400)  # nothing labelled: the frame
    label[:, 150:450] = True  # lesions across the middle: both side strips too narrow
    assert polyp_free_strip(label) is None
    assert polyp_free_strip(label, StripRule(min_side=100, min_share=0.2, max_aspect=4)) == (450 + gap, 0, 600, 400)


def test_cut_frames_are_the_source_pixels_and_hold_no_lesion(tmp_path, capsys):
    split = tmp_path / "ids.txt"
    split.write_text("\n".join(TRAIN[:12]) + "\n")
    out = tmp_path / "frames"
    with pytest.raises(SystemExit) as exit_info:
        main(["frames", "polyp-free", "--images", str(KVASIR / "images"), "--masks", str(KVASIR / "masks"),
              "--split", str(split), "--out", str(out)])
    assert exit_info.value.code == 0
    written = sorted(out.glob("*.png"))
    assert f"{len(written)} polyp-free frames from 12 labelled frames" in capsys.readouterr().out
    assert 0 < len(written) < 12  # some frames' polyps leave no strip large enough
    for path in written:
        image = cv2.imread(str(KVASIR / "images" / f"{path.stem}.jpg"))
        label = binary_label(cv2.imread(str(KVASIR / "masks" / f"{path.stem}.jpg"), cv2.IMREAD_GRAYSCALE))
        x0, y0, x1, y1 = polyp_free_strip(label)
        assert np.array_equal(cv2.imread(str(path)), image[y0:y1, x0:x1])  # lossless, the frame's own pixels
        assert not label[y0:y1, x0:x1].any() and min(x1 - x0, y1 - y0) >= 200


def test_bad_input_is_one_line_naming_the_file(tmp_path):
    split = tmp_path / "ids.txt"
    split.write_text("no-such-id\n")
    with pytest.raises(FrameCatalogError, match="no image for id no-such-id"):
        cut_polyp_free_frames(str(KVASIR / "images"), str(KVASIR / "masks"), str(tmp_path / "a"), str(split))
    split.write_text(f"{TRAIN[0]}\n")
    with pytest.raises(FrameCatalogError, match="no frame of the 1 has a polyp-free strip of at least 5000 px"):
        cut_polyp_free_frames(str(KVASIR / "images"), str(KVASIR / "masks"), str(tmp_path / "b"), str(split),
                              StripRule(min_side=5000))


def test_a_job_cuts_its_host_frames_on_first_use_and_refuses_a_folder_cut_from_other_ids(tmp_path):
    from pipeline.config import config_from_dict
    from pipeline.plan.plan import frame_catalog

    split = tmp_path / "ids.txt"
    split.write_text("\n".join(TRAIN[:12]) + "\n")
    source = {"images": str(KVASIR / "images"), "masks": str(KVASIR / "masks"), "split": str(split)}
    config = config_from_dict({"frames": {"source": str(tmp_path / "hosts"), "polyp_free_from": source}})
    catalog = frame_catalog(config)  # cut now: no record of sources in the folder yet
    assert 0 < len(catalog.records) <= 12 and (tmp_path / "hosts" / "cut_from.json").exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "hosts").iterdir()}
    assert len(frame_catalog(config).records) == len(catalog.records)  # cut once
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "hosts").iterdir()} == stamps
    split.write_text("\n".join(TRAIN[6:12]) + "\n")  # the split no longer allows some hosts
    with pytest.raises(FrameCatalogError, match="cut from .* id\\(s\\) outside frames.polyp_free_from.split"):
        frame_catalog(config)
    split.write_text("\n".join(TRAIN[:12]) + "\n")
    (tmp_path / "hosts" / "stray.png").write_bytes(next((tmp_path / "hosts").glob("*.png")).read_bytes())
    with pytest.raises(FrameCatalogError, match="holds stray.png, which its cut_from.json does not list"):
        frame_catalog(config)
    with pytest.raises(ConfigError, match="not a glob pattern"):
        config_from_dict({"frames": {"source": str(tmp_path / "*.png"), "polyp_free_from": source}})
