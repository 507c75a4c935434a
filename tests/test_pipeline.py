"""`tomochunk run`: convert -> segment -> pick -> evaluate over several tomograms, and resume."""

import json

import numpy as np
import pytest
import yaml

import tomochunk as tc
from tomochunk.errors import FormatError, MissingError
from tomochunk.pipeline import load_config, run


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    (root / "tomos").mkdir()
    (root / "truth").mkdir()
    for i in range(2):
        vol, objs, _ = tc.phantom_tomogram((32, 48, 48), classes=2, seed=i, tomo=f"t{i}")
        tc.write_volume(vol, root / "tomos" / f"t{i}.mrc", voxel_size=10.0)
        tc.write_objects(objs, root / "truth" / f"t{i}.xml")
    tc.save_model(tc.deepfinder_unet(3, filters=(4, 4, 4)), root / "tiny.keras")
    cfg = {"inputs": ["tomos/*.mrc"], "outdir": "out",
           "segment": {"model": "tiny.keras", "patch_size": 32, "crop": 4},
           "pick": {"method": "cc", "min_size": 1, "formats": ["xml", "star"]},
           "evaluate": {"truth": "truth/{name}.xml", "max_dist": 4}}
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    return root


def test_run_all_stages_then_resume(project, client):
    table = run(project / "run.yaml", client=client)
    assert list(table["tomogram"].map(lambda p: p.split("/")[-1])) == ["t0.mrc", "t1.mrc"]
    assert {"precision", "recall", "f1", "picks"} <= set(table.columns)
    out = project / "out"
    for name in ("t0", "t1"):
        assert tc.io.omezarr.is_complete(out / f"{name}.zarr" / "labels" / "classes")
        assert (out / f"{name}.xml").exists() and (out / f"{name}.star").exists()
        seg = tc.open_volume(out / f"{name}.zarr" / "labels" / "classes")
        assert seg.shape == (32, 48, 48) and seg.dtype == np.uint8
    stamp = (out / "t0.xml").stat().st_mtime_ns
    again = run(project / "run.yaml", client=client)  # everything complete: nothing is redone
    assert (out / "t0.xml").stat().st_mtime_ns == stamp
    assert list(again["picks"]) == list(table["picks"])


def test_config_errors(tmp_path):
    with pytest.raises(MissingError):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: [a\n")
    with pytest.raises(FormatError, match="bad.yaml"):
        load_config(bad)
    bad.write_text("inputs: [a]\nsegmnt: {}\n")
    with pytest.raises(FormatError, match="unknown config keys: segmnt"):
        load_config(bad)
    bad.write_text("inputs: [nothing/*.mrc]\n")
    with pytest.raises(MissingError, match="no input matches"):
        run(bad)


def test_run_same_file_name_in_two_folders(project, client, tmp_path):
    """TS_01/tomo.mrc and TS_02/tomo.mrc: two stores, two lists, each with its own tomogram's picks."""
    from tomochunk.workflows.picking import pick_inputs

    for i, ts in enumerate(("TS_01", "TS_02")):
        (tmp_path / ts).mkdir()
        vol, _, _ = tc.phantom_tomogram((32, 48, 48), classes=2, seed=10 + i)
        tc.write_volume(vol, tmp_path / ts / "tomo.mrc", voxel_size=10.0)
    cfg = {"inputs": ["TS_*/tomo.mrc"], "outdir": "out",
           "segment": {"model": str(project / "tiny.keras"), "patch_size": 32, "crop": 4},
           "pick": {"method": "cc", "min_size": 1, "formats": ["xml"]}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    table = run(tmp_path / "run.yaml", client=client)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.zarr")) == ["TS_01_tomo.zarr", "TS_02_tomo.zarr"]
    assert not (out / "tomo.zarr").exists() and not (out / "tomo.xml").exists()
    assert len(set(table["store"])) == 2
    for ts in ("TS_01", "TS_02"):
        listed = tc.read_objects(out / f"{ts}_tomo.xml")
        own = pick_inputs(out / f"{ts}_tomo.zarr", method="cc", min_size=1)
        assert len(listed) == len(own)
        np.testing.assert_allclose(listed[["x", "y", "z"]].to_numpy(float), own[["x", "y", "z"]].to_numpy(float))
    # the two tomograms differ, so their stores (and their picks) must too
    a = tc.open_volume(out / "TS_01_tomo.zarr").values
    b = tc.open_volume(out / "TS_02_tomo.zarr").values
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("section, text, match", [
    ("convert", "{level: 3}", "unknown key in convert: level"),
    ("segment", "{patch_size: 30}", "multiple of 4"),
    ("segment", "{patch_size: 32, crop: 16}", "leaves nothing"),
    ("pick", "{radius: 0}", "pick.radius must be"),
    ("pick", "{voxel_size: -10}", "pick.voxel_size must be"),
    ("pick", "{method: blobs}", "pick.method"),
    ("pick", "{radius: abc}", "pick.radius must be"),
    ("evaluate", "{max_dist: 4}", "truth"),
    ("segment", "[1, 2]", "mapping"),
])
def test_config_values_checked_before_work(tmp_path, section, text, match):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"inputs: [nothing/*.mrc]\n{section}: {text}\n")
    with pytest.raises(FormatError, match=match) as exc:
        load_config(bad)
    assert "bad.yaml" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(FormatError, match=match):  # a dict config is checked as well, before inputs
        run(yaml.safe_load(bad.read_text()))


def test_object_lists_written_atomically(project):
    out = project / "out"
    assert not list(out.glob(".*.tmp.*"))  # no temporary list left by a completed run


def test_resume_refuses_outputs_of_another_input(tmp_path):
    from tomochunk.workflows.pipeline import _check_same_source

    for ab in ("A", "B"):
        (tmp_path / ab).mkdir()
        (tmp_path / ab / "tomo.mrc").write_bytes(b"x" * 100)
    _check_same_source(tmp_path, "tomo", tmp_path / "A" / "tomo.mrc")
    _check_same_source(tmp_path, "tomo", tmp_path / "A" / "tomo.mrc")  # same input: resumes
    with pytest.raises(FormatError, match="were made from .*A/tomo.mrc, not .*B/tomo.mrc") as e:
        _check_same_source(tmp_path, "tomo", tmp_path / "B" / "tomo.mrc")
    assert "\n" not in str(e.value)
    # a record of an older tomochunk (the path only) is kept for the same path, with its identity now
    marker = tmp_path / ".old.source.json"
    marker.write_text(json.dumps({"source": str((tmp_path / "A" / "tomo.mrc").resolve())}))
    _check_same_source(tmp_path, "old", tmp_path / "A" / "tomo.mrc")
    assert json.loads(marker.read_text())["source"]["size"] == 100
    with pytest.raises(FormatError, match="were made from"):
        _check_same_source(tmp_path, "old", tmp_path / "B" / "tomo.mrc")


def test_run_refuses_a_replaced_input(project, client, tmp_path):
    """The input file replaced by other data (same name, same shape): the rerun must not report the
    old outputs as the new file's."""
    (tmp_path / "tomos").mkdir()
    vol, _, _ = tc.phantom_tomogram((32, 48, 48), classes=2, seed=20)
    src = tmp_path / "tomos" / "t.mrc"
    tc.write_volume(vol, src, voxel_size=10.0)
    cfg = {"inputs": ["tomos/*.mrc"], "outdir": "out",
           "segment": {"model": str(project / "tiny.keras"), "patch_size": 32, "crop": 4},
           "pick": {"method": "cc", "min_size": 1, "formats": ["xml"]}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run(tmp_path / "run.yaml", client=client)
    out = tmp_path / "out"
    before = {p: p.stat().st_mtime_ns for p in (out / "t.xml", out / "t.zarr" / ".zattrs")}
    other, _, _ = tc.phantom_tomogram((32, 48, 48), classes=2, seed=21)
    tc.write_volume(other, src, voxel_size=10.0, overwrite=True)
    with pytest.raises(FormatError, match=r"outputs t\.\* were made from .*t\.mrc as it was then") as e:
        run(tmp_path / "run.yaml", client=client)
    assert str(src.resolve()) in str(e.value) and "\n" not in str(e.value)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing rewritten
