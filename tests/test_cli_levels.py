"""`segment --level N` (issue 22): the network runs on a pyramid level, the maps are written at that
level's NGFF scale, and picks come back in level-0 voxels with the level-0 voxel size."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tomochunk as tc
from tomochunk.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _cli(*argv):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tomochunk.cli", *map(str, argv)], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def binned(tmp_path_factory):
    """A 5 Å phantom of spheres twice the shipped model's size, so that its level 1 (10 Å) is what the
    model was trained on; segmented at level 1 by the CLI."""
    d = tmp_path_factory.mktemp("levels")
    assert main(["phantom", str(d / "p.zarr"), "--shape", "64,128,128", "--classes", "sphere:10", "--snr", "2",
                 "--density", "0.06", "--voxel-size", "5", "--seed", "1", "--levels", "2"]) == 0
    r = _cli("segment", d / "p.zarr", "-m", "phantom", "-o", d / "seg", "--level", "1", "--patch", "32",
             "--crop", "4", "--tiling", "blocks", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "level 1, 10 A voxels" in r.stdout
    return d


def test_level_maps_carry_the_level_scale(binned):
    labels = binned / "seg" / "p.zarr" / "labels"
    for name, shape in (("scores", (2, 32, 64, 64)), ("classes", (32, 64, 64))):
        attrs = json.loads((labels / name / ".zattrs").read_text())
        ct = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"]
        assert ct[0]["scale"][-3:] == [10.0, 10.0, 10.0]
        # level 1 of a mean pyramid: voxel i is the mean of level-0 voxels 2i, 2i+1, centred 2.5 Å further
        assert ct[1]["translation"][-3:] == [2.5, 2.5, 2.5]
        assert attrs["image_level"] == 1
        vol = tc.open_volume(labels / name)
        assert vol.shape[-3:] == shape[-3:] and vol.attrs["voxel_size"] == 10.0
    # the level-1 label image lies on the image's level 1 in space (napari/NGFF overlay them)
    img1 = tc.open_volume(binned / "seg" / "p.zarr", level=1)
    cls = tc.open_volume(labels / "classes")
    np.testing.assert_allclose(cls.x.values, img1.x.values)


def test_picks_at_level_1_score_against_level_0_truth(binned, tmp_path):
    seg = binned / "seg" / "p.zarr"
    assert main(["pick", str(seg), "--method", "cc", "--min-size", "10", "--classes", "1",
                 "-o", str(tmp_path / "picks.csv")]) == 0
    from tomochunk.workflows.batch import pick_many

    df = pick_many([seg], method="cc", min_size=10, classes=[1])
    assert df.attrs["voxel_size"] == 5.0 and df.attrs["picked_voxel_size"] == 10.0
    truth = tc.read_objects(binned / "truth" / "p_objects.csv")
    picks = tc.read_objects(tmp_path / "picks.csv")
    assert len(picks) == len(df)
    # coordinates are level-0 voxels: the matched picks lie within a voxel or two of the truth
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(truth[["x", "y", "z"]].to_numpy()).query(picks[["x", "y", "z"]].to_numpy())
    assert np.median(dist) < 1.0 and (dist < 2).mean() > 0.8
    r = _cli("evaluate", tmp_path / "picks.csv", binned / "truth" / "p_objects.csv", "--max-dist", "2",
             "-o", tmp_path / "table.csv")
    assert r.returncode == 0, r.stderr
    import pandas as pd

    table = pd.read_csv(tmp_path / "table.csv", index_col=0)
    assert table.loc["all", "f1"] > 0.8, r.stdout
    # in Å, through a STAR file that carries the voxel size: the same score
    assert main(["pick", str(seg), "--method", "cc", "--min-size", "10", "--classes", "1",
                 "-o", str(tmp_path / "picks.star")]) == 0
    assert tc.read_objects(tmp_path / "picks.star").attrs["voxel_size"] == 5.0
    r = _cli("evaluate", tmp_path / "picks.star", binned / "truth" / "p_objects.csv", "--unit", "angstrom",
             "--max-dist", "10", "--voxel-size", "5", "-o", tmp_path / "table_a.csv")
    assert r.returncode == 0, r.stderr
    assert pd.read_csv(tmp_path / "table_a.csv", index_col=0).loc["all", "f1"] == table.loc["all", "f1"]


def test_pick_level_of_a_label_pyramid_gives_level_0_voxels(tmp_path):
    _, obj, labels = tc.phantom_tomogram((32, 64, 64), classes=1, seed=2, n_objects=6)
    tc.write_volume(labels, tmp_path / "lab.zarr", voxel_size=10.0, label=True, levels=2)
    from tomochunk.workflows.picking import pick_inputs

    full = pick_inputs(tmp_path / "lab.zarr", method="cc", min_size=5)
    half = pick_inputs(tmp_path / "lab.zarr", method="cc", min_size=1, level=1)
    assert half.attrs["voxel_size"] == 10.0 and half.attrs["picked_voxel_size"] == 20.0
    assert "picked_voxel_size" not in full.attrs
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(full[["x", "y", "z"]].to_numpy()).query(half[["x", "y", "z"]].to_numpy())
    assert len(half) == len(full) and dist.max() < 1.5


def test_segment_level_bad_arguments(binned, tmp_path, capsys, one_line):
    one_line(["segment", binned / "p.zarr", "-m", "phantom", "-o", tmp_path, "--level", "-1"], "level", "-1")
    one_line(["segment", binned / "p.zarr", "-m", "phantom", "-o", tmp_path, "--level", "two"], "two")
    one_line(["segment", binned / "p.zarr", "-m", "phantom", "-o", tmp_path / "s", "--level", "5",
              "--workers", "1"], "level 5", "has 3 levels")
    # a store segmented at level 1 is not silently taken for level 0, nor redone without --overwrite
    one_line(["segment", binned / "seg" / "p.zarr", "-m", "phantom", "-o", binned / "seg"],
             "segmented at level 1, not 0", "--overwrite")
    assert main(["segment", str(binned / "seg" / "p.zarr"), "-m", "phantom", "-o", str(binned / "seg"),
                 "--level", "1"]) == 0
    assert "already segmented" in capsys.readouterr().out
