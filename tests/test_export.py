"""Export: accepted samples only, runs merged without duplicates, failed gates refused, readers with no
glue (datasets for Parquet, the folder loader for folders), same bytes on a re-run, manifest last."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.core import storage
from pipeline.core.digests import sha256_hex
from pipeline.core.images import decode_image
from pipeline.data.sources import resolve
from pipeline.errors import ExportError, GateError
from pipeline.export.export import ExportOptions, export_runs
from pipeline.export.manifest import ExportManifest
from pipeline.testing.data import shared_data
from pipeline.testing.runs import kvasir_pairs, write_gated_run

PAIRS = kvasir_pairs(shared_data() / "kvasir-seg", "test", 10)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of one job (same ids where they overlap: pairs 4 and 5), one with a rejected sample."""
    root = tmp_path_factory.mktemp("runs")
    a = write_gated_run(str(root / "a"), PAIRS[:6], "job", rejected={1: ["unpainted"]})
    b = write_gated_run(str(root / "b"), PAIRS[4:], "job")
    return root, a, b


def test_parquet_export_holds_accepted_unique_samples_and_loads_with_datasets(runs, tmp_path):
    import datasets

    root, a, b = runs
    manifest = export_runs([str(root / "a"), str(root / "b")], ExportOptions(out=str(tmp_path / "ex"), shard_size=4))
    expected = [i for k, i in enumerate(a) if k != 1] + b[2:]
    assert manifest.samples == len(expected) == 9
    assert [r.duplicates for r in manifest.runs] == [0, 2] and [r.accepted for r in manifest.runs] == [5, 6]
    assert [f.rows for f in manifest.files if f.path.endswith(".parquet")] == [4, 4, 1]
    for file in manifest.files:  # the sizes and checksums are those of the files
        data = storage.read_bytes(str(tmp_path / "ex" / file.path))
        assert len(data) == file.bytes and sha256_hex(data) == file.sha256

    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "ex"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert ds["sample_id"] == expected and all(ds["accepted"])
    first = ds[0]
    assert first["image"].mode == "RGB" and first["mask"].mode == "L"
    assert set(np.unique(np.asarray(first["mask"]))) <= {0, 255}
    assert {"source_frame", "engine", "attributes", "run_id", "reasons"} <= set(ds.column_names)
    card = (tmp_path / "ex" / "README.md").read_text()
    assert card.startswith("---\n") and "Must not be used for" in card and "data/train-*" in card


def test_rerun_gives_the_same_bytes_and_removes_stale_files(runs, tmp_path):
    root, _, _ = runs
    out = tmp_path / "ex"
    export_runs([str(root / "a")], ExportOptions(out=str(out), shard_size=2))  # 3 files
    first = export_runs([str(root / "a"), str(root / "b")], ExportOptions(out=str(out), shard_size=4))
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    second = export_runs([str(root / "a"), str(root / "b")], ExportOptions(out=str(out), shard_size=4))
    again = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert first == second and files == again
    assert sorted(files) == sorted([f.path for f in first.files] + ["manifest.json"])


def test_folder_export_reads_with_the_folder_loader_and_carries_its_provenance(runs, tmp_path):
    root, a, _ = runs
    manifest = export_runs([str(root / "a")], ExportOptions(out=str(tmp_path / "f"), format="folders",
                                                            include_rejected=True))
    assert manifest.samples == 6 and manifest.rejected_included == 1
    refs = resolve(str(tmp_path / "f"))
    assert sorted(ref.sample_id for ref in refs) == sorted(a)
    mask = decode_image((tmp_path / "f" / "masks" / f"{a[0]}.png").read_bytes())
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    metadata = pq.read_table(tmp_path / "f" / "metadata.parquet")  # what the pixels were made from, per sample
    assert metadata.column("sample_id").to_pylist() == a and "image" not in metadata.column_names
    assert [Path(f).stem for f in metadata.column("source_frame").to_pylist()] == [Path(i).stem for i, _ in PAIRS[:6]]
    assert metadata.column("reasons").to_pylist()[1] == ["unpainted"]
    files = {f.path: f for f in manifest.files}
    assert files["metadata.parquet"].sha256 == sha256_hex((tmp_path / "f" / "metadata.parquet").read_bytes())
    lineage = manifest.runs[0].lineage  # every sample out, the gate chose none: only donors and hosts
    assert lineage.hosts.files == {sha256_hex(i.read_bytes()): i.stem for i, _ in PAIRS[:6]} and not lineage.gated
    gated = export_runs([str(root / "a")], ExportOptions(out=str(tmp_path / "g"), format="folders"))
    assert gated.runs[0].lineage.gated and PAIRS[1][0].stem not in gated.runs[0].lineage.hosts.files.values()
    export_runs([str(root / "a")], ExportOptions(out=str(tmp_path / "f")))  # Parquet over a folders export
    assert not (tmp_path / "f" / "metadata.parquet").exists() and not list((tmp_path / "f" / "images").glob("*.png"))


def test_refusals(runs, tmp_path):
    root, _, _ = runs
    failed = str(tmp_path / "failed")
    write_gated_run(failed, PAIRS[:2], "bad", passed=False)
    with pytest.raises(ExportError, match="failed its gate.*--force"):
        export_runs([failed], ExportOptions(out=str(tmp_path / "x")))
    assert export_runs([failed], ExportOptions(out=str(tmp_path / "x"), force=True)).runs[0].forced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an export folder"):
        export_runs([str(root / "a")], ExportOptions(out=str(tmp_path / "other")))
    storage.remove(str(root / "b" / "gate" / "_SUCCESS"))
    with pytest.raises(GateError, match="never gated"):
        export_runs([str(root / "b")], ExportOptions(out=str(tmp_path / "y")))
    storage.write_bytes_atomic(str(root / "b" / "gate" / "_SUCCESS"), b"")


def test_half_written_export_is_refused_and_random_weights_are_flagged(tmp_path, caplog):
    run = str(tmp_path / "r")
    write_gated_run(run, PAIRS[:2], "rw", random_weights=True)
    manifest = export_runs([run], ExportOptions(out=str(tmp_path / "ex")))
    assert manifest.random_weights and "RANDOM model weights" in caplog.text
    assert "WARNING" in (tmp_path / "ex" / "README.md").read_text()
    assert json.loads((tmp_path / "ex" / "manifest.json").read_text())["runs"][0]["random_weights"]
    (tmp_path / "ex" / "manifest.json").unlink()  # as a crash before the last write leaves it
    with pytest.raises(ExportError, match="not a finished export"):
        ExportManifest.read(str(tmp_path / "ex"))
    with pytest.raises(ExportError, match="not a finished export"):
        resolve(str(tmp_path / "ex"))


def test_export_to_object_storage(runs, s3_server):
    import s3fs

    root, a, _ = runs
    s3fs.S3FileSystem(anon=False).mkdir("exports")
    manifest = export_runs([str(root / "a")], ExportOptions(out="s3://exports/e1", shard_size=3))
    assert ExportManifest.read("s3://exports/e1") == manifest
    assert sorted(ref.sample_id for ref in resolve("s3://exports/e1")) == sorted(i for k, i in enumerate(a) if k != 1)
