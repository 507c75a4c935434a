"""Intensity normalisation of tomograms and movies, lazily and out of core."""

from __future__ import annotations

import numpy as np

from .._log import get_logger
from ..errors import ShapeError, ValueProblem

log = get_logger(__name__)

METHODS = ("meanstd", "percentile", None)


def _split(volume):
    """(dask array, rewrap function) for numpy, dask or xarray input."""
    import dask.array as da
    import xarray as xr

    if isinstance(volume, xr.DataArray):
        data = volume.data
        if not isinstance(data, da.Array):
            data = da.from_array(np.asarray(data), chunks="auto")

        def wrap(out):
            return xr.DataArray(out, dims=volume.dims, coords=volume.coords, attrs=dict(volume.attrs),
                                name=volume.name)
        return data, wrap, dict(volume.attrs)
    if not isinstance(volume, da.Array):
        volume = da.from_array(np.asarray(volume), chunks="auto")
    return volume, (lambda out: out), {}


def global_stats(data, *, client=None):
    """Mean and standard deviation (ddof=0) of a dask array in one distributed pass.

    Each block reduces to ``(n, sum, sum of squares)`` in float64, so the
    data is read once and only three numbers per block reach the client.

    Examples
    --------
    >>> import dask.array as da
    >>> global_stats(da.arange(10, chunks=3))
    (4.5, 2.8722813232690143)
    """
    import dask

    f = data.astype(np.float64)
    sums = (f.sum(), (f * f).sum())  # one graph: every block is read once for both sums
    s, ss = client.compute(list(sums), sync=True) if client is not None else dask.compute(*sums)
    n = float(max(data.size, 1))
    mean = float(s) / n
    var = max(float(ss) / n - mean * mean, 0.0)
    return mean, float(np.sqrt(var))


def normalize(volume, *, method="meanstd", stats=None, percentiles=(1.0, 99.0), clip=False,
              eps=1e-8, dtype=np.float32, client=None):
    """Normalise intensities lazily: global mean/std, or per-frame percentiles.

    Parameters
    ----------
    volume : numpy, dask or xarray array
        ``[z, y, x]`` tomogram or ``[t, y, x]`` movie. xarray keeps its dims, coords and attrs.
    method : {"meanstd", "percentile", None}
        ``"meanstd"`` (default, what DeepFinder does before segmenting): ``(v - mean) / std``
        with the mean and standard deviation (ddof=0) of the whole volume. They are computed
        now, in one distributed pass over the data (or taken from ``stats``, or from the
        statistics that :func:`tomochunk.convert` recorded in an OME-Zarr store's attributes);
        the normalisation itself stays lazy.
        ``"percentile"``: every frame (slice along the first axis) is mapped linearly so that
        its ``percentiles`` go to 0 and 1 (for TIRF movies, whose brightness drifts); lazy.
        ``None``: returned as float, unchanged.
    stats : (mean, std), optional
        Known global statistics; skips the pass over the data.
    percentiles : (low, high)
        Percentiles mapped to 0 and 1 by ``"percentile"``.
    clip : bool
        Clip the ``"percentile"`` output to [0, 1].
    dtype : numpy dtype
        Output dtype.
    client : distributed.Client, optional
        Where to compute the statistics (default: the current Dask scheduler).

    Returns
    -------
    Same kind as the input (dask array for numpy input), lazy.

    Examples
    --------
    >>> import numpy as np
    >>> v = normalize(np.arange(8.0).reshape(2, 2, 2))
    >>> float(abs(v.mean().compute())) < 1e-6, round(float(v.std().compute()), 5)
    (True, 1.0)
    """
    if method not in METHODS:
        raise ValueProblem(f"unknown normalisation {method!r}; expected one of {METHODS}")
    data, wrap, attrs = _split(volume)
    if data.ndim < 2:
        raise ShapeError(f"expected a 3D volume or movie, got {data.ndim}D")
    dtype = np.dtype(dtype)
    if method is None:
        return wrap(data.astype(dtype))
    if method == "meanstd":
        if stats is None:
            rec = (attrs.get("tomochunk") or {}).get("stats") or {}
            if rec.get("mean") is not None and rec.get("std") is not None and not rec.get("nonfinite"):
                stats = (rec["mean"], rec["std"])
                log.info("using the statistics recorded in the store: mean %g, std %g", *stats)
        if stats is None:
            stats = global_stats(data, client=client)
            log.info("global statistics: mean %g, std %g", *stats)
        mean, std = (float(v) for v in stats)
        scale = 1.0 / max(std, eps)
        out = data.map_blocks(_meanstd_block, mean, scale, dtype, dtype=dtype)
        return wrap(out)
    lo, hi = (float(p) for p in percentiles)
    if not 0 <= lo < hi <= 100:
        raise ValueProblem(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    # whole frames per block, so that each frame's percentiles are exact
    frames = data.rechunk({i: -1 for i in range(1, data.ndim)})
    out = frames.map_blocks(_percentile_block, lo, hi, clip, eps, dtype, dtype=dtype)
    return wrap(out)


def _meanstd_block(block, mean, scale, dtype):
    out = np.asarray(block, dtype=np.float64 if dtype.itemsize > 4 else np.float32) - mean
    out *= scale
    return out.astype(dtype, copy=False)


def _percentile_block(block, lo, hi, clip, eps, dtype):
    b = np.asarray(block, dtype=np.float32)
    flat = b.reshape(b.shape[0], -1)
    p = np.percentile(flat, [lo, hi], axis=1).astype(np.float32)  # (2, frames)
    shape = (b.shape[0],) + (1,) * (b.ndim - 1)
    low = p[0].reshape(shape)
    span = np.maximum(p[1] - p[0], eps).reshape(shape)
    out = (b - low) / span
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out.astype(dtype, copy=False)
