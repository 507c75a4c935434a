"""export_meshes: marching cubes per object, .obj files read back with trimesh."""

import numpy as np
import pytest

from tomochunk.errors import ExistsError
from tomochunk.io.mesh import export_meshes


def _ball(shape, centre, r):
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= r * r


@pytest.fixture
def labelmap():
    lab = np.zeros((32, 40, 48), np.uint8)
    lab[_ball(lab.shape, (16, 20, 12), 6)] = 1
    lab[4:12, 25:35, 30:44] = 2          # a box of class 2
    lab[28:32, 0:3, 45:48] = 2           # touches the border: still closed
    lab[30, 38, 2] = 1                   # one-voxel dust
    return lab


def test_single_obj_file(tmp_path, labelmap):
    import trimesh
    from skimage.measure import marching_cubes

    out = tmp_path / "m.obj"
    df = export_meshes(labelmap, out, voxel_size=10.0, min_volume=10, classes={1: "ball", 2: "box"})
    assert list(df.class_label) == [1, 2, 2]          # dust dropped
    assert df.attrs["voxel_size"] == 10.0
    ball = np.pad(labelmap == 1, 1)
    ball[31, 39, 3] = False
    v, f, _, _ = marching_cubes(ball.astype(np.float32), 0.5)
    assert df.n_vertices.iloc[0] == len(v)
    scene = trimesh.load(out, process=False, group_material=False)
    meshes = scene.geometry if hasattr(scene, "geometry") else {"one": scene}
    assert sum(len(m.vertices) for m in meshes.values()) == df.n_vertices.sum()
    assert sum(len(m.faces) for m in meshes.values()) == df.n_faces.sum()


def test_folder_of_objs_angstrom_xyz(tmp_path, labelmap):
    import trimesh

    df = export_meshes(labelmap, tmp_path / "meshes", voxel_size=10.0, min_volume=10)
    files = sorted((tmp_path / "meshes").glob("*.obj"))
    assert len(files) == 3
    m = trimesh.load(df.file.iloc[0], process=False)
    assert len(m.vertices) == df.n_vertices.iloc[0]
    # ball centre (z, y, x) = (16, 20, 12) voxels -> (x, y, z) = (120, 200, 160) Å
    np.testing.assert_allclose(m.vertices.mean(0), [120, 200, 160], atol=3)
    assert m.is_watertight and m.volume > 0        # closed, normals outward
    np.testing.assert_allclose(m.volume, (labelmap == 1).sum() * 1000, rtol=0.15)
    box = trimesh.load(df.file.iloc[2], process=False)  # the border object is closed too
    assert box.is_watertight and box.volume > 0
    with pytest.raises(ExistsError):
        export_meshes(labelmap, tmp_path / "meshes", voxel_size=10.0, min_volume=10)


def test_scoremap_dask_xarray(tmp_path):
    import dask.array as da
    import trimesh
    import xarray as xr

    from tomochunk import write_volume

    shape = (24, 24, 24)
    zz, yy, xx = np.indices(shape)
    d = np.sqrt((zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2)
    s1 = np.clip(1.2 - d / 6, 0, 1).astype(np.float32)      # 0.5 at radius 4.2
    scores = np.stack([1 - s1, s1, np.zeros(shape, np.float32)])
    arr = xr.DataArray(da.from_array(scores, chunks=(1, 12, 12, 12)), dims=("c", "z", "y", "x"),
                       attrs={"voxel_size": 5.0})
    df = export_meshes(arr, tmp_path / "s.obj", level=0.5)
    assert list(df.class_label) == [1]
    m = trimesh.load(tmp_path / "s.obj", process=False)
    r = np.linalg.norm(m.vertices - 60.0, axis=1)
    np.testing.assert_allclose(r, 4.2 * 5.0, atol=1.0)    # smooth sphere from the scores, in Å
    # a label map read back from an OME-Zarr path
    write_volume((s1 >= 0.5).astype(np.uint8), tmp_path / "lab.zarr", voxel_size=5.0, levels=1)
    df2 = export_meshes(tmp_path / "lab.zarr", tmp_path / "l.obj")
    assert len(df2) == 1 and df2.attrs["voxel_size"] == 5.0


def test_cli(tmp_path, labelmap, capsys):
    from tomochunk import write_volume
    from tomochunk.cli import main

    write_volume(labelmap, tmp_path / "lab.mrc", voxel_size=10.0)
    assert main(["export-meshes", str(tmp_path / "lab.mrc"), "-o", str(tmp_path / "m"), "--classes", "2",
                 "--min-volume", "10"]) == 0
    assert "2 meshes" in capsys.readouterr().out
    assert len(list((tmp_path / "m").glob("class2_*.obj"))) == 2
    assert main(["export-meshes", str(tmp_path / "lab.mrc"), "-o", str(tmp_path / "m"), "--classes", "2",
                 "--min-volume", "10"]) == 2
