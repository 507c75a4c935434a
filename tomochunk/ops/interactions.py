"""Combining the score maps of several models, lazily.

``compete`` lets emitting maps suppress an absorbing map wherever one of them
scores higher (for example a ribosome model suppressing a generic "particle"
model). ``interact`` keeps (``"colocalize"``) or removes (``"avoid"``) a child
map within ``radius`` of the thresholded parent map (for example ribosomes on
membranes), a 3D ball dilation done blockwise with a halo of ``radius``.
"""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
from scipy import ndimage as ndi

from .._log import get_logger
from ..errors import ShapeError, ValueProblem
from ._arrays import as_dask

log = get_logger(__name__)

__all__ = ["compete", "interact"]


def _keys(spec, keys, what):
    if spec is None:
        raise ValueProblem(f"{what} must name at least one map")
    spec = [spec] if isinstance(spec, (str, int, np.integer)) else list(spec)
    for k in spec:
        if k not in keys:
            raise ValueProblem(f"{what}: no score map {k!r} (have {list(keys)})")
    return spec


def compete(scores, emit=None, absorb=None):
    """Zero each absorbing map wherever any emitting map scores higher.

    Parameters
    ----------
    scores : list or dict of arrays, or a ``[c, ...]`` array
        Score maps of equal shape (numpy, dask or xarray).
    emit, absorb : key or list of keys
        Indices (list / stack) or keys (dict) of the emitting and absorbing maps.

    Returns
    -------
    Same container as ``scores`` (a dask array for a stack, xarray kept as
    xarray), lazy; non-absorbing maps are returned unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> out = compete({"ribo": np.array([0.9, 0.1]), "any": np.array([0.5, 0.5])}, emit="ribo", absorb="any")
    >>> out["any"].compute().tolist()
    [0.0, 0.5]
    """
    stacked = not isinstance(scores, (list, tuple, dict))
    wrapper = scores if stacked and hasattr(scores, "dims") else None
    if stacked:
        arr, _ = as_dask(scores, "scores")
        maps = {i: arr[i] for i in range(arr.shape[0])}
    elif isinstance(scores, dict):
        maps = {k: as_dask(v, f"scores[{k!r}]")[0] for k, v in scores.items()}
    else:
        maps = {i: as_dask(v, f"scores[{i}]")[0] for i, v in enumerate(scores)}
    shapes = {m.shape for m in maps.values()}
    if len(shapes) != 1:
        raise ShapeError(f"score maps must all have the same shape, got {sorted(shapes)}")
    emit = _keys(emit, maps, "emit")
    absorb = _keys(absorb, maps, "absorb")
    top = da.stack([maps[k] for k in emit]).max(axis=0) if len(emit) > 1 else maps[emit[0]]
    out = dict(maps)
    for k in absorb:
        others = top if k not in emit else (
            da.stack([maps[e] for e in emit if e != k]).max(axis=0) if len(emit) > 1 else None)
        if others is None:
            continue
        out[k] = da.where(others > maps[k], 0, maps[k]).astype(maps[k].dtype)
    if stacked:
        res = da.stack([out[i] for i in range(len(out))])
        return wrapper.copy(data=res) if wrapper is not None else res
    if isinstance(scores, dict):
        return {k: _rewrap(scores[k], out[k]) for k in scores}
    return [_rewrap(scores[i], out[i]) for i in range(len(scores))]


def _rewrap(orig, arr):
    return orig.copy(data=arr) if hasattr(orig, "dims") else arr


def _dilate_block(block, radius):
    m = np.asarray(block)
    if not m.any():
        return np.zeros(m.shape, bool)
    if m.all():
        return np.ones(m.shape, bool)
    return ndi.distance_transform_edt(~m) <= radius


def interact(child, parent, *, mode: str = "colocalize", radius: float, threshold: float = 0.5):
    """Keep or remove a child score map near the thresholded parent map.

    Parameters
    ----------
    child, parent : array
        Score maps of equal shape (numpy, dask or xarray).
    mode : {"colocalize", "avoid"}
        ``"colocalize"`` zeroes the child farther than ``radius`` from the
        parent's foreground; ``"avoid"`` zeroes it within ``radius``.
    radius : float
        Ball radius in voxels (≥ 0).
    threshold : float
        Parent foreground is ``parent >= threshold``.

    Returns
    -------
    dask.array.Array (or xarray.DataArray for an xarray child), lazy.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.zeros((1, 1, 9)); p[0, 0, 0] = 1
    >>> interact(np.ones((1, 1, 9)), p, radius=2).compute().ravel().tolist()
    [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    """
    c, _ = as_dask(child, "child")
    p, _ = as_dask(parent, "parent")
    if c.shape != p.shape:
        raise ShapeError(f"child shape {c.shape} differs from parent shape {p.shape}")
    if mode not in ("colocalize", "avoid"):
        raise ValueProblem(f"mode must be 'colocalize' or 'avoid', got {mode!r}")
    if radius is None or not radius >= 0:
        raise ValueProblem(f"radius must be >= 0, got {radius}")
    p = p.rechunk(c.chunks)
    depth = int(math.ceil(radius))
    mask = p >= threshold
    # a halo longer than an axis is the whole axis
    depths = {ax: min(depth, n) for ax, n in enumerate(mask.shape)}
    near = mask.map_overlap(_dilate_block, depth=depths, boundary="none", dtype=bool, radius=float(radius)) \
        if depth > 0 else mask
    keep = near if mode == "colocalize" else ~near
    out = da.where(keep, c, 0).astype(c.dtype)
    return _rewrap(child, out)
