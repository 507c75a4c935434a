"""Label maps from object lists: DeepFinder's rules, chunk independence, Zarr output."""

import dask.array as da
import numpy as np
import pandas as pd
import pytest

import tomochunk
from tomochunk.errors import ShapeError, ValueProblem
from tomochunk.targets import rotate_template_deepfinder, shapes, sphere_template, spheres


def _reference_paint(objs, shape, templates, init=None):
    """Straight numpy painting in list order, the DeepFinder way (whole volume)."""
    out = np.zeros(shape, np.uint8) if init is None else init.copy()
    for _, o in objs.iterrows():
        t = templates[int(o.class_label)]
        if "phi" in objs and np.isfinite(o.phi):
            t = np.round(rotate_template_deepfinder(t.astype(float), o.phi, o.psi, o.the)) == 1
        c = t.shape[0] // 2
        for dz, dy, dx in zip(*np.nonzero(t)):
            z, y, x = int(o.z) + dz - c, int(o.y) + dy - c, int(o.x) + dx - c
            if 0 <= z < shape[0] and 0 <= y < shape[1] and 0 <= x < shape[2]:
                out[z, y, x] = o.class_label
    return out


@pytest.fixture
def objects():
    rng = np.random.default_rng(0)
    n = 25
    return pd.DataFrame({"class_label": rng.integers(1, 4, n),
                         "x": rng.uniform(-2, 42, n), "y": rng.uniform(-2, 36, n),
                         "z": rng.uniform(-2, 30, n)})


def test_sphere_template_deepfinder_box():
    t = sphere_template(6, 3)      # radius == Rmax: the + side cap is cut by the 2*Rmax box
    assert t.shape == (6, 6, 6)
    assert t[3, 3, 0] and t[3, 3, 3]       # offset -3 is in, +3 falls outside the box
    full = sphere_template(8, 3)
    assert full.sum() == 123 and t.sum() == 123 - 3


@pytest.mark.parametrize("chunks", [None, (11, 13, 17)])
def test_spheres_match_reference(objects, chunks):
    shape = (30, 36, 40)
    radii = [2, 4, 3]
    init = np.zeros(shape, np.uint8)
    init[10:12] = 5
    lab = spheres(objects, shape, radii, chunks=chunks, initial=init)
    assert isinstance(lab, da.Array)
    templates = {i + 1: sphere_template(8, r) for i, r in enumerate(radii)}
    np.testing.assert_array_equal(lab.compute(), _reference_paint(objects, shape, templates, init))


def test_shapes_rotated_match_reference(objects):
    rng = np.random.default_rng(1)
    objects = objects.assign(phi=rng.uniform(0, 360, len(objects)), psi=rng.uniform(0, 360, len(objects)),
                             the=rng.uniform(0, 180, len(objects)))
    objects.loc[3, ["phi", "psi", "the"]] = np.nan          # no angles: not rotated
    rod = np.zeros((9, 9, 9), bool)
    rod[4, 4, 1:8] = True
    rod[2:7, 4, 4] = True
    masks = {1: rod, 2: np.pad(np.ones((5, 5, 5), np.int8), 2), 3: rod.transpose(1, 0, 2)}
    shape = (30, 36, 40)
    lab = shapes(objects, shape, masks, chunks=(16, 16, 16)).compute()
    np.testing.assert_array_equal(lab, _reference_paint(objects, shape, {k: np.asarray(v) == 1
                                                                          for k, v in masks.items()}))


def test_later_objects_overwrite_earlier():
    objs = pd.DataFrame({"class_label": [1, 2], "x": [10, 12], "y": [10, 10], "z": [10, 10]})
    lab = spheres(objs, (20, 24, 24), {1: 4, 2: 4}).compute()
    assert lab[10, 10, 12] == 2 and lab[10, 10, 7] == 1
    lab = spheres(objs.iloc[::-1], (20, 24, 24), {1: 4, 2: 4}).compute()
    assert lab[10, 10, 10] == 1


def test_rotation_by_90_degrees():
    rod = np.zeros((9, 9, 9), bool)
    rod[4, 4, :] = True                    # along x
    objs = pd.DataFrame({"class_label": [1], "x": [8], "y": [8], "z": [8],
                         "phi": [90.0], "psi": [0.0], "the": [0.0]})
    lab = shapes(objs, (16, 16, 16), {1: rod}).compute()
    assert lab.sum() == 9
    nz = np.nonzero(lab)
    assert len(set(nz[2])) == 1            # no longer along x


def test_to_zarr_and_tomo_selection(tmp_path, objects, client):
    objs = pd.concat([objects.assign(tomo="a"), objects.assign(tomo="b", class_label=1)])
    with pytest.raises(ValueProblem, match="tomo"):
        spheres(objs, (30, 36, 40), 3)
    lab = spheres(objs, (30, 36, 40), 3, tomo="b", chunks=16)
    lab.to_zarr(str(tmp_path / "t.zarr"))
    back = da.from_zarr(str(tmp_path / "t.zarr")).compute()
    assert set(np.unique(back)) == {0, 1}
    assert tomochunk.targets.spheres is spheres


def test_errors(objects):
    with pytest.raises(ValueProblem, match=r"class label\(s\) \[3\]"):
        spheres(objects, (30, 36, 40), [2, 3])
    with pytest.raises(ShapeError):
        spheres(objects, (30, 36, 40), 2, initial=np.zeros((3, 3, 3)))
    with pytest.raises(ShapeError, match="cubic"):
        shapes(objects.assign(phi=0.0, psi=0.0, the=10.0), (30, 36, 40),
               {1: np.ones((3, 3, 5)), 2: np.ones((3, 3, 3)), 3: np.ones((3, 3, 3))})
    with pytest.raises(ValueProblem, match="column"):
        spheres(objects.drop(columns="x"), (30, 36, 40), 2)


def test_cli_target(tmp_path, objects):
    from tomochunk.cli import main

    objs = objects.assign(tomo="t1")
    objs.attrs["voxel_size"] = 10.0
    tomochunk.write_objects(objs, tmp_path / "objs.csv")
    out = tmp_path / "lab.zarr"
    assert main(["target", str(tmp_path / "objs.csv"), "--shape", "30,36,40", "--radii", "2,4,3",
                 "--chunks", "16", "-o", str(out)]) == 0
    lab = tomochunk.open_volume(out).data.compute()
    ref = spheres(tomochunk.read_objects(tmp_path / "objs.csv"), (30, 36, 40), [2, 4, 3]).compute()
    np.testing.assert_array_equal(lab, ref)
    assert main(["target", str(tmp_path / "objs.csv"), "--shape", "30,36,40", "--radii", "1:2",
                 "-o", str(tmp_path / "x.zarr")]) == 2          # classes 2, 3 have no radius


def test_objects_outside_the_volume_warn_with_the_count():
    objs = pd.DataFrame({"class_label": [1, 1, 1], "x": [5, 50, -9], "y": [5, 5, 5], "z": [5, 5, 5]})
    with pytest.warns(UserWarning, match="2 of 3 objects lie outside"):
        lab = spheres(objs, (16, 16, 16), 2).compute()
    assert lab[5, 5, 5] == 1


def test_heatmap_objects_outside_the_volume_warn_with_the_count():
    from tomochunk.ops.heatmap import heatmap_targets

    objs = pd.DataFrame({"x": [5.0, 30.0], "y": [5.0, 5.0], "z": [5.0, 5.0]})
    with pytest.warns(UserWarning, match="1 of 2 objects lie outside"):
        heat, _ = heatmap_targets(objs, (16, 16, 16))
    assert float(heat[5, 5, 5].compute()) == 1.0
