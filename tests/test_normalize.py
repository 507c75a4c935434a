"""Normalisation with non-finite voxels (issue 19 item 3): never a silently spoiled volume."""

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from tomochunk.errors import ValueProblem
from tomochunk.ops.normalize import finite_stats, normalize


def _volume():
    v = np.random.default_rng(0).normal(3.0, 2.0, (8, 16, 16)).astype(np.float32)
    v[1, 2, 3] = np.nan
    v[5, 6, 7] = np.inf
    return v


@pytest.mark.parametrize("chunks", [None, 4])
def test_one_nan_one_inf_give_finite_output_and_a_warning_with_the_count(chunks):
    v = _volume()
    arr = v if chunks is None else da.from_array(v, chunks=chunks)
    with pytest.warns(UserWarning, match=r"^2 of 2048 voxels are NaN or Inf"):
        out = np.asarray(normalize(arr))
    assert np.isfinite(out).all()
    assert out[1, 2, 3] == 0 and out[5, 6, 7] == 0
    fin = np.isfinite(v)
    ref = (v[fin].astype(np.float64) - v[fin].mean(dtype=np.float64)) / v[fin].std(dtype=np.float64)
    np.testing.assert_allclose(out[fin], ref, atol=1e-5)


def test_finite_stats_counts_and_ignores_nonfinite():
    v = _volume()
    mean, std, bad = finite_stats(da.from_array(v, chunks=4))
    fin = v[np.isfinite(v)].astype(np.float64)
    assert bad == 2
    assert mean == pytest.approx(fin.mean()) and std == pytest.approx(fin.std())


def test_no_finite_voxel_is_refused():
    with pytest.raises(ValueProblem, match="no finite voxel"):
        normalize(np.full((4, 4, 4), np.nan, np.float32))


def test_store_statistics_with_nonfinite_voxels_warn():
    v = _volume()
    fin = v[np.isfinite(v)].astype(np.float64)
    rec = {"mean": fin.mean(), "std": fin.std(), "min": float(fin.min()), "max": float(fin.max()), "nonfinite": 2}
    xa = xr.DataArray(da.from_array(v, chunks=8), dims=("z", "y", "x"), attrs={"tomochunk": {"stats": rec}})
    with pytest.warns(UserWarning, match="2 of 2048"):
        out = normalize(xa).values
    assert np.isfinite(out).all()


def test_percentile_ignores_nonfinite_pixels():
    v = _volume()
    out = np.asarray(normalize(v, method="percentile", percentiles=(0, 100)))
    assert np.isfinite(out).all()
    assert out[1, 2, 3] == 0
    f = v[1][np.isfinite(v[1])]
    np.testing.assert_allclose(out[1][np.isfinite(v[1])], (f - f.min()) / (f.max() - f.min()), atol=1e-6)


def test_finite_volume_gives_no_warning(recwarn):
    normalize(np.arange(64.0).reshape(4, 4, 4)).compute()
    assert not [w for w in recwarn if "NaN" in str(w.message)]
