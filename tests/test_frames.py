"""The frame catalog on real frames: good ones are kept, broken ones skipped with their reason,
nothing usable is an error, and folders, glob patterns and S3 URLs are all sources."""

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import FrameCatalogError
from pipeline.plan.fov import FieldOfView
from pipeline.plan.frames import build_catalog, list_frames, load_frame
from pipeline.testing.data import shared_data

DATA = shared_data()
MUCOSA = DATA / "normal-mucosa"
KVASIR = DATA / "kvasir-seg" / "images"


def add_bad_frames(folder: Path) -> None:
    """One frame of each kind that must be skipped, made from real frames."""
    jpeg = (MUCOSA / "4.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "notes.jpg").write_text("not a picture, whatever the name says\n")
    Image.open(MUCOSA / "5.jpg").resize((32, 32)).save(folder / "tiny.png")
    Image.new("RGB", (320, 240)).save(folder / "black.png")  # a blank (lens-cap) frame


@pytest.fixture
def mixed(tmp_path):
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        shutil.copy(MUCOSA / name, tmp_path / name)
    add_bad_frames(tmp_path)
    Image.open(MUCOSA / "6.jpg").convert("L").save(tmp_path / "gray.png")
    (tmp_path / "readme.txt").write_text("not listed: not an image extension\n")
    return tmp_path


def test_keeps_good_frames_and_skips_bad_ones_with_their_reason(mixed, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.plan.frames"):
        catalog = build_catalog(str(mixed))
    assert [Path(r.uri).name for r in catalog.records] == ["1.jpg", "2.jpg", "3.jpg", "gray.png"]
    reasons = {Path(s.uri).name: s.reason for s in catalog.skipped}
    assert reasons.keys() == {"truncated.jpg", "notes.jpg", "tiny.png", "black.png"}
    assert reasons["truncated.jpg"].startswith("truncated:")
    assert reasons["notes.jpg"].startswith("not an image:")
    assert reasons["tiny.png"].startswith("too small: 32x32")
    assert reasons["black.png"].startswith("no tissue:")
    first = catalog.records[0]
    assert first.uri == str(mixed / "1.jpg") and Path(first.uri).is_absolute()
    assert first.sha256 == hashlib.sha256((mixed / "1.jpg").read_bytes()).hexdigest()
    assert (first.width, first.height) == (256, 256)
    assert all(r.fov.visible_fraction() > 0.98 for r in catalog.records)
    assert sum("skipping frame" in m and "truncated.jpg" in m for m in caplog.messages) == 1
    assert any("skipped 4 of 8 frames" in m for m in caplog.messages)


def test_truncation_is_caught_even_when_pil_is_told_to_pad(mixed, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some libraries do globally
    png = (mixed / "gray.png").read_bytes()
    (mixed / "cut.png").write_bytes(png[: len(png) * 2 // 3])
    reasons = {Path(s.uri).name: s.reason for s in build_catalog(str(mixed)).skipped}
    assert reasons["truncated.jpg"].startswith("truncated:")
    assert reasons["cut.png"].startswith("truncated:")


def test_grayscale_frames_come_back_as_rgb(mixed):
    rgb = load_frame(str(mixed / "gray.png"))
    assert rgb.shape == (256, 256, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert np.array_equal(load_frame(str(mixed / "1.jpg")), np.asarray(Image.open(mixed / "1.jpg")))


def test_nothing_usable_is_an_error_naming_the_source_and_the_reasons(tmp_path):
    add_bad_frames(tmp_path)
    with pytest.raises(FrameCatalogError) as error:
        build_catalog(str(tmp_path))
    message = str(error.value)
    assert str(tmp_path) in message
    for summary in ("truncated: 1", "not an image: 1", "too small: 1", "no tissue: 1"):
        assert summary in message


def test_missing_or_empty_sources_are_errors_naming_them(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(FrameCatalogError, match=f"{missing}.*does not exist"):
        build_catalog(str(missing))
    with pytest.raises(FrameCatalogError, match=f"{tmp_path}.*no image files"):
        build_catalog(str(tmp_path))


def test_glob_patterns_and_limit(mixed):
    assert [Path(u).name for u in list_frames(str(mixed / "*.png"))] == ["black.png", "gray.png", "tiny.png"]
    catalog = build_catalog(str(mixed / "[12].jpg"))
    assert [Path(r.uri).name for r in catalog.records] == ["1.jpg", "2.jpg"]
    first_five = build_catalog(str(MUCOSA), limit=5).records
    assert [r.uri for r in first_five] == sorted(str(p) for p in MUCOSA.glob("*.jpg"))[:5]


def test_parallel_build_with_progress_is_the_same_catalog():
    source = str(KVASIR / "cju0*.jpg")
    assert build_catalog(source, workers=2, progress=True) == build_catalog(source)


def test_digest_follows_the_frames_contents(mixed):
    before = build_catalog(str(mixed)).digest()
    shutil.copy(MUCOSA / "7.jpg", mixed / "2.jpg")
    assert build_catalog(str(mixed)).digest() != before


def test_load_frame_errors_name_the_frame(mixed):
    for name in ("truncated.jpg", "notes.jpg", "missing.jpg"):
        with pytest.raises(FrameCatalogError, match=f"{mixed / name}"):
            load_frame(str(mixed / name))


def test_s3_source(s3_server, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="frames-test")
    names = ["10.jpg", "11.jpg", "12.jpg"]
    for name in names:
        s3.put_object(Bucket="frames-test", Key=f"normal/{name}", Body=(MUCOSA / name).read_bytes())
    s3.put_object(Bucket="frames-test", Key="normal/README.md", Body=b"not a frame")
    s3.put_object(Bucket="frames-test", Key="normal/more/13.jpg", Body=(MUCOSA / "13.jpg").read_bytes())

    catalog = build_catalog("s3://frames-test/normal/", workers=2)
    assert [r.uri for r in catalog.records] == [f"s3://frames-test/normal/{n}" for n in names]
    assert [r.sha256 for r in catalog.records] == [
        hashlib.sha256((MUCOSA / n).read_bytes()).hexdigest() for n in names
    ]
    assert list_frames("s3://frames-test/normal/1?.jpg") == [r.uri for r in catalog.records]
    assert np.array_equal(load_frame(catalog.records[0].uri), load_frame(str(MUCOSA / "10.jpg")))
    with pytest.raises(FrameCatalogError, match="s3://frames-test/elsewhere/"):
        build_catalog("s3://frames-test/elsewhere/")
    with pytest.raises(FrameCatalogError, match="s3://frames-test/normal/9.jpg"):
        load_frame("s3://frames-test/normal/9.jpg")


def test_a_single_file_is_a_source(mixed):
    (record,) = build_catalog(str(mixed / "1.jpg")).records
    assert record.uri == str(mixed / "1.jpg")
    assert record.fov == FieldOfView.full()  # a borderless 256x256 crop: every cell visible
