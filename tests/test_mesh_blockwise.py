"""Issue 21: export_meshes works block by block and gives the whole-volume meshes."""

import dask
import dask.array as da
import numpy as np
import pytest
import trimesh
import xarray as xr
from scipy import ndimage as ndi

from tomochunk.io._source import Source
from tomochunk.io.mesh import export_meshes, object_meshes


def _labelmap(rng):
    """Objects that cross block faces (16³ blocks), including a U whose arms meet only two blocks away."""
    lab = np.zeros((48, 40, 44), np.uint8)
    blobs = ndi.gaussian_filter(rng.normal(size=lab.shape), 2.0)
    lab[blobs > 0.08] = 1
    lab[blobs < -0.12] = 2
    lab[:, 18:22, :] = 0
    u = np.zeros(lab.shape, bool)           # class 3: a U spanning blocks, joined at z = 40..44 only
    u[4:44, 19:21, 5:7] = True
    u[4:44, 19:21, 36:38] = True
    u[40:44, 19:21, 5:38] = True
    lab[u] = 3
    lab[0:3, 0:3, 0:3] = 2                  # dust in a corner
    return lab


class _Recorder(Source):
    """A numpy volume behind dask that records the size of every read."""

    def __init__(self, a):
        self.a, self.shape, self.dtype, self.reads = a, a.shape, a.dtype, []

    def read(self, key):
        out = self.a[key]
        self.reads.append(out.size)
        return out


def _reference(mask, **kw):
    return {oid: (size, verts, faces, cen) for oid, size, verts, faces, cen in object_meshes(mask, **kw)}


@pytest.mark.parametrize("chunks", [16, (12, 20, 11)])
def test_blockwise_meshes_equal_whole_volume(tmp_path, rng, chunks):
    lab = _labelmap(rng)
    df = export_meshes(lab, tmp_path / "m", voxel_size=2.0, min_volume=20, chunks=chunks)
    assert set(df.class_label) == {1, 2, 3}
    for c in (1, 2, 3):
        ref = _reference(lab == c, min_volume=20, voxel_size=2.0)
        got = df[df.class_label == c]
        assert list(got.obj_id) == sorted(ref), c       # same objects, numbered as ndi.label numbers them
        for row in got.itertuples():
            size, verts, faces, cen = ref[row.obj_id]
            assert row.size == size and row.n_vertices == len(verts) and row.n_faces == len(faces)
            np.testing.assert_allclose([row.z, row.y, row.x], cen)
            m = trimesh.load(row.file, process=False)
            np.testing.assert_allclose(m.vertices, verts, atol=1e-3)   # .obj keeps 3 decimals
            np.testing.assert_array_equal(m.faces, faces)
            ref_area = trimesh.Trimesh(verts, faces, process=False).area
            assert m.area == pytest.approx(ref_area, rel=1e-3)          # only the 3-decimal rounding differs
    u = df[df.class_label == 3]
    assert len(u) == 1 and u["size"].iloc[0] == (lab == 3).sum()   # the U is one object, not two


def test_blockwise_score_map_equals_whole_volume(tmp_path):
    shape = (40, 36, 36)
    zz, yy, xx = np.indices(shape)
    s1 = np.zeros(shape, np.float32)
    for c, r in (((12, 12, 12), 6), ((26, 22, 24), 8)):   # spheres across the 16³ block faces
        d = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
        s1 = np.maximum(s1, np.clip(1.2 - d / r, 0, 1))
    scores = np.stack([1 - s1, s1])
    arr = xr.DataArray(da.from_array(scores, chunks=(1, 16, 16, 16)), dims=("c", "z", "y", "x"),
                       attrs={"voxel_size": 5.0})
    df = export_meshes(arr, tmp_path / "s.obj", level=0.5)
    ref = _reference(s1 >= 0.5, field=s1, level=0.5, voxel_size=5.0)
    assert list(df.obj_id) == sorted(ref)
    assert list(df.n_vertices) == [len(ref[i][1]) for i in sorted(ref)]


def test_blockwise_memory_bounded(tmp_path, rng):
    """Blocks are read one at a time, and no read is near the whole volume."""
    lab = np.zeros((64, 64, 64), np.uint8)
    for k in range(6):                      # small objects, some across block faces
        z, y, x = rng.integers(4, 52, 3)
        lab[z:z + 9, y:y + 9, x:x + 9] = 1 + k % 2
    src = _Recorder(lab)
    arr = xr.DataArray(da.from_array(src, chunks=16, asarray=False, meta=np.empty((0, 0, 0), lab.dtype)),
                       dims=("z", "y", "x"), attrs={"voxel_size": 1.0})
    with dask.config.set(scheduler="synchronous"):  # reads recorded here, not in a cluster worker's copy
        df = export_meshes(arr, tmp_path / "m.obj", min_volume=1)
    assert len(df) >= 1
    assert max(src.reads) <= 16 ** 3 * 8     # a block, or one object's box (11³ at most, across ≤ 8 blocks)
    assert max(src.reads) < lab.size / 16
    ref = sum(len(list(object_meshes(lab == c, min_volume=1))) for c in (1, 2))
    assert len(df) == ref


def test_origin_shifts_vertices(tmp_path):
    lab = np.zeros((16, 16, 16), np.uint8)
    lab[4:10, 4:10, 4:10] = 1
    plain = export_meshes(lab, tmp_path / "a.obj", voxel_size=2.0)
    moved = export_meshes(xr.DataArray(lab, dims=("z", "y", "x"), attrs={"voxel_size": 2.0,
                                                                          "origin": (300.0, 200.0, 100.0)}),
                          tmp_path / "b.obj")
    a, b = trimesh.load(tmp_path / "a.obj", process=False), trimesh.load(tmp_path / "b.obj", process=False)
    np.testing.assert_allclose(b.vertices - a.vertices, np.tile([100.0, 200.0, 300.0], (len(a.vertices), 1)))
    assert plain.x.iloc[0] == moved.x.iloc[0]  # centroids stay in voxels
