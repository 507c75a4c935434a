"""The workflows layer: the one tomogram-name rule, unique batch outputs, old import paths."""

import importlib
import subprocess
import sys

import numpy as np
import pytest

import tomochunk as tc
from tomochunk._names import tomo_name
from tomochunk.errors import ValueProblem
from tomochunk.workflows.batch import output_names, output_paths, pick_many


@pytest.mark.parametrize("path, name", [
    ("a/t1.ome.zarr", "t1"), ("a/t1.zarr", "t1"), ("stack.mrcs", "stack"), ("b/tomo.rec", "tomo"),
    ("c/tomo.mrc", "tomo"), ("TS_01.st", "TS_01"), ("x.hdf5", "x"), ("y.TIF", "y"), ("frames/", "frames"),
    ("run.v2.mrc", "run.v2"), ("t1.ome.zarr/", "t1"),
])
def test_tomo_name_rule(path, name):
    assert tomo_name(path) == name


def test_every_name_rule_is_the_one_rule(tmp_path):
    """convert's store name, the volume's name and the feature stores follow tomo_name."""
    from tomochunk.io.convert import output_name
    from tomochunk.nn.features import output_path

    assert output_name("d/t1.ome.zarr") == "t1.zarr"
    assert output_name("d/t1.rec") == "t1.zarr"
    assert output_path(tmp_path, "d/t1.mrcs") == tmp_path / "t1.zarr"
    vol, _, _ = tc.phantom_tomogram((8, 16, 16), classes=1, seed=0)
    tc.write_volume(vol, tmp_path / "t2.ome.zarr", levels=1)
    assert tc.open_volume(tmp_path / "t2.ome.zarr").name == "t2"


def test_output_names_unique_or_refused(tmp_path):
    names = output_names(["TS_01/tomo.mrc", "TS_02/tomo.mrc", "TS_03/other.mrc"])
    assert names == {"TS_01/tomo.mrc": "TS_01_tomo", "TS_02/tomo.mrc": "TS_02_tomo", "TS_03/other.mrc": "other"}
    assert output_paths(["a/t.mrc"], tmp_path) == {"a/t.mrc": tmp_path / "t.zarr"}
    with pytest.raises(ValueProblem, match="same input"):
        output_names([tmp_path / "t.mrc", tmp_path / "." / "t.mrc"])
    with pytest.raises(ValueProblem):
        output_names([])


def _label_store(path, n):
    lab = np.zeros((16, 16, 16), np.uint8)
    for k in range(n):
        lab[2:4, 2 + 4 * k:4 + 4 * k, 2:4] = 1
    tc.write_volume(lab, path, levels=1, label=True)


def test_pick_many_keeps_tomograms_apart(tmp_path):
    for ts, n in (("TS_01", 1), ("TS_02", 3)):
        (tmp_path / ts).mkdir()
        _label_store(tmp_path / ts / "tomo.zarr", n)
    objs = pick_many([tmp_path / "TS_01" / "tomo.zarr", tmp_path / "TS_02" / "tomo.zarr"], method="cc")
    assert objs.groupby("tomo").size().to_dict() == {"TS_01_tomo": 1, "TS_02_tomo": 3}
    assert list(objs["obj_id"]) == [1, 2, 3, 4]


def test_cli_convert_and_pick_many_same_names(tmp_path, capsys):
    from tomochunk.cli import main

    for ts, n in (("TS_01", 1), ("TS_02", 2)):
        (tmp_path / ts).mkdir()
        lab = np.zeros((16, 16, 16), np.uint8)
        lab[2:4, 2:4, 2:4 + 4 * n] = 1  # one rod per tomogram, of a different length
        tc.write_volume(lab, tmp_path / ts / "tomo.mrc", voxel_size=10.0)
    srcs = [str(tmp_path / ts / "tomo.mrc") for ts in ("TS_01", "TS_02")]
    assert main(["convert", *srcs, "-o", str(tmp_path / "z"), "--levels", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "z").glob("*.zarr")) == ["TS_01_tomo.zarr", "TS_02_tomo.zarr"]
    assert main(["pick", *srcs, "--method", "cc", "-o", str(tmp_path / "o.csv")]) == 0
    objs = tc.read_objects(tmp_path / "o.csv")
    assert sorted(objs["tomo"].astype(str)) == ["TS_01_tomo", "TS_02_tomo"]
    size = dict(zip(objs["tomo"].astype(str), objs["size"]))
    assert size["TS_01_tomo"] < size["TS_02_tomo"]  # each tomogram's own rod, the longer one in TS_02
    assert "TS_01_tomo" in capsys.readouterr().out


def test_old_import_paths_forward():
    from tomochunk.ops import tirf as old
    from tomochunk.ops.pick import pick_inputs
    from tomochunk.pipeline import run
    from tomochunk.workflows import tirf
    from tomochunk.workflows.picking import pick_inputs as new_pick
    from tomochunk.workflows.pipeline import run as new_run

    assert old.merge_annotations is tirf.merge_annotations and old.EVENT_RADII == (4, 2, 0)
    assert pick_inputs is new_pick and run is new_run and tc.run is new_run
    assert tc.workflows.pick_inputs is new_pick
    with pytest.raises(AttributeError):
        old.no_such_name
    for name in tc.workflows.__all__:
        assert getattr(tc.workflows, name) is not None


def test_workflows_import_without_tensorflow():
    code = ("import sys, tomochunk.workflows as w, tomochunk.workflows.tirf, tomochunk.workflows.pipeline, "
            "tomochunk.workflows.batch; w.output_names(['a.mrc']); "
            "print('tensorflow' in sys.modules or 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert importlib.import_module("tomochunk.workflows").__all__
