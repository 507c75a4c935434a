import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi

from tomochunk.errors import ShapeError, ValueProblem
from tomochunk.ops.interactions import compete, interact


def test_compete_list_dict_stack(rng):
    a, b, c = (rng.random((10, 12, 14)).astype(np.float32) for _ in range(3))
    out = compete([a, b, c], emit=[0, 1], absorb=2)
    assert isinstance(out[2], da.Array)
    exp = np.where(np.maximum(a, b) > c, 0, c)
    np.testing.assert_array_equal(out[2].compute(), exp)
    np.testing.assert_array_equal(out[0].compute(), a)
    d = compete({"ribo": a, "any": c}, emit="ribo", absorb="any")
    np.testing.assert_array_equal(d["any"].compute(), np.where(a > c, 0, c))
    st = compete(da.from_array(np.stack([a, b, c]), chunks=(1, 5, 6, 7)), emit=0, absorb=[1, 2])
    res = st.compute()
    np.testing.assert_array_equal(res[1], np.where(a > b, 0, b))
    np.testing.assert_array_equal(res[2], np.where(a > c, 0, c))


def test_compete_errors(rng):
    a = rng.random((4, 4, 4))
    with pytest.raises(ValueProblem):
        compete([a, a], emit=[0], absorb=[5])
    with pytest.raises(ShapeError):
        compete([a, a[:2]], emit=0, absorb=1)


@pytest.mark.parametrize("radius", [1.5, 4])
def test_interact_equals_whole_array_dilation(client, rng, radius):
    parent = (rng.random((30, 32, 28)) > 0.998).astype(np.float32)
    child = rng.random(parent.shape).astype(np.float32)
    r = int(np.ceil(radius))
    z, y, x = np.ogrid[-r:r + 1, -r:r + 1, -r:r + 1]
    ball = z * z + y * y + x * x <= radius * radius
    near = ndi.binary_dilation(parent >= 0.5, structure=ball)
    pc, cc = da.from_array(parent, chunks=10), da.from_array(child, chunks=10)
    col = interact(cc, pc, mode="colocalize", radius=radius)
    av = interact(cc, pc, mode="avoid", radius=radius)
    assert isinstance(col, da.Array)
    np.testing.assert_array_equal(col.compute(), np.where(near, child, 0))
    np.testing.assert_array_equal(av.compute(), np.where(near, 0, child))


def test_interact_xarray_and_errors():
    import xarray as xr

    p = np.zeros((8, 8, 8)); p[0, 0, 0] = 1
    c = xr.DataArray(np.ones((8, 8, 8)), dims=("z", "y", "x"))
    out = interact(c, p, radius=1)
    assert isinstance(out, xr.DataArray) and float(out.sum()) == 4
    with pytest.raises(ValueProblem):
        interact(c, p, radius=-1)
    with pytest.raises(ValueProblem):
        interact(c, p, radius=1, mode="x")
    with pytest.raises(ShapeError):
        interact(c, p[:4], radius=1)
