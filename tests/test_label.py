import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi

from tomochunk.errors import ShapeError, ValueProblem
from tomochunk.ops.label import label, regionprops


def _equal_up_to_permutation(a, b):
    if not np.array_equal(a > 0, b > 0):
        return False
    m = a > 0
    pairs = np.unique(np.stack([a[m], b[m]], axis=1), axis=0)
    return len(pairs) == len(np.unique(a[m])) == len(np.unique(b[m]))


@pytest.mark.parametrize("connectivity", [1, 2, 3])
def test_label_equals_scipy_random(client, rng, connectivity):
    structure = ndi.generate_binary_structure(3, connectivity)
    for density in (0.25, 0.45):
        m = rng.random((26, 31, 29)) < density
        ref, n_ref = ndi.label(m, structure)
        persist = density > 0.3  # both passes: block labels kept on workers, or labelled again
        lab, n = label(da.from_array(m, chunks=(9, 11, 10)), connectivity=connectivity, persist=persist)
        out = lab.compute()
        assert n == n_ref
        assert out.dtype == np.int32 and out.max() == n
        assert set(np.unique(out)) == set(range(n + 1))  # consecutive labels
        assert _equal_up_to_permutation(ref, out)


def test_label_structure_argument_and_corner_touching():
    # a diagonal chain crossing block corners: one object with connectivity 3, many with 1
    m = np.zeros((24, 24, 24), bool)
    for i in range(24):
        m[i, i, i] = True
    chunks = 8
    lab26, n26 = label(da.from_array(m, chunks=chunks), structure=np.ones((3, 3, 3)))
    assert n26 == 1
    lab6, n6 = label(da.from_array(m, chunks=chunks), connectivity=1)
    assert n6 == 24
    # edge-touching across a block edge (not a corner): connectivity 2 joins, 1 does not
    e = np.zeros((16, 16, 16), bool)
    e[7, 7, 3:6] = True
    e[8, 8, 3:6] = True
    assert label(da.from_array(e, chunks=8), connectivity=2)[1] == 1
    assert label(da.from_array(e, chunks=8), connectivity=1)[1] == 2


def test_label_large_objects_spanning_blocks(client):
    z, y, x = np.mgrid[:40, :40, :40]
    m = ((z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 < 15 ** 2)
    m |= (z == 2) & (y == 2)  # a thin rod along x through all blocks
    ref, n_ref = ndi.label(m)
    lab, n = label(da.from_array(m, chunks=14))
    assert n == n_ref == 2
    assert _equal_up_to_permutation(ref, lab.compute())


def test_label_accepts_xarray_and_numpy():
    import xarray as xr

    m = np.zeros((10, 10, 10), bool)
    m[2:4, 2:4, 2:4] = True
    m[7:9, 7:9, 7:9] = True
    lab, n = label(xr.DataArray(da.from_array(m, chunks=5), dims=("z", "y", "x")))
    assert n == 2
    lab, n = label(m)
    assert n == 2
    lab, n = label(np.zeros((5, 5, 5), bool))
    assert n == 0 and lab.compute().max() == 0


def test_label_bad_arguments():
    with pytest.raises(ValueProblem):
        label(np.zeros((4, 4, 4)), connectivity=4)
    with pytest.raises(ShapeError):
        label(np.zeros((4, 4, 4)), structure=np.ones((3, 3)))


def test_regionprops_matches_scipy(client, rng):
    m = rng.random((30, 30, 30)) < 0.3
    ref, n = ndi.label(m)
    inten = rng.random(m.shape)
    classes = rng.integers(0, 3, m.shape)
    lab = da.from_array(ref, chunks=11)
    df = regionprops(lab, intensity=da.from_array(inten, chunks=11), classes=da.from_array(classes, chunks=11))
    assert len(df) == n
    assert list(df.columns[:6]) == ["class_label", "x", "y", "z", "size", "obj_id"]
    df = df.set_index("obj_id").sort_index()
    idx = np.arange(1, n + 1)
    com = np.array(ndi.center_of_mass(m, ref, idx))
    np.testing.assert_allclose(df[["z", "y", "x"]].to_numpy(), com)
    np.testing.assert_array_equal(df["size"].to_numpy(), ndi.sum_labels(m, ref, idx))
    np.testing.assert_allclose(df["score_sum"].to_numpy(), ndi.sum_labels(inten, ref, idx))
    np.testing.assert_allclose(df["score_max"].to_numpy(), ndi.maximum(inten, ref, idx))
    objs = ndi.find_objects(ref)
    for i in (1, n // 2, n):
        sl = objs[i - 1]
        row = df.loc[i]
        assert (row.bbox_z0, row.bbox_y0, row.bbox_x0) == (sl[0].start, sl[1].start, sl[2].start)
        assert (row.bbox_z1, row.bbox_y1, row.bbox_x1) == (sl[0].stop, sl[1].stop, sl[2].stop)
        vals = classes[ref == i]
        vals = vals[vals > 0] if (vals > 0).any() else vals
        counts = np.bincount(vals)
        assert row.class_label == np.argmax(counts)


def test_regionprops_empty():
    df = regionprops(np.zeros((6, 6, 6), np.int32))
    assert len(df) == 0 and "x" in df.columns


@pytest.mark.parametrize("shape,chunks", [((200,), (13,)), ((50, 47), (9, 8)), ((10, 11, 9, 8), (4, 5, 4, 3))])
def test_label_other_dimensions(rng, shape, chunks):
    for conn in range(1, len(shape) + 1):
        m = rng.random(shape) < 0.45
        ref, n_ref = ndi.label(m, ndi.generate_binary_structure(len(shape), conn))
        lab, n = label(da.from_array(m, chunks=chunks), connectivity=conn, persist=False)  # computed locally below
        assert n == n_ref
        assert _equal_up_to_permutation(ref, lab.compute(scheduler="sync"))
