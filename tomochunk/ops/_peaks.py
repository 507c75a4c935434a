"""The peak engine of :func:`~tomochunk.ops.pick.pick` and :func:`~tomochunk.ops.heatmap.decode_heatmap`.

A designated private module: ``pick`` (all modes) and ``decode_heatmap`` (NMS) share
the block function, the halo rule and the frame of picks, so neither imports the other.
A pick belongs to the block whose core (not halo) holds it, so the result equals one
pass over the whole array; a map that is one block runs that pass directly with numpy.
"""

from __future__ import annotations

import itertools
import math

import dask
import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from .._blocks import chunk_bounds
from .._log import get_logger
from ..errors import ShapeError, ValueProblem
from ._ccl import in_memory, one_block

try:  # seung-lab's EDT: the same squared distances as scipy's, ~6x faster (sparse score maps)
    import edt as _EDT
except ImportError:  # pragma: no cover - a declared dependency
    _EDT = None

log = get_logger(__name__)


def ball(r: int, metric: str):
    if metric == "box":
        return np.ones((2 * r + 1,) * 3, bool)
    z, y, x = np.ogrid[-r:r + 1, -r:r + 1, -r:r + 1]
    return z * z + y * y + x * x <= r * r + 1e-9


def squash(score):
    # monotonic map of any float score into (0, 1): orders ties of the distance by score
    return 0.5 + np.arctan(np.asarray(score, np.float64)) / np.pi


def ball_maxima(key, mask, r):
    """``mask & (key == max of key over a ball of radius r)``, without a slow non-separable filter.

    The bounding box (separable filter) proves most maxima, the inscribed box
    rules most other voxels out, and only the few undecided voxels are checked
    against every offset of the ball.
    """
    big = ndi.maximum_filter(key, size=2 * r + 1, mode="constant", cval=-np.inf)
    cand = mask & (key == big)
    ri = int(math.floor(r / math.sqrt(3)))
    if ri >= 1:
        small = ndi.maximum_filter(key, size=2 * ri + 1, mode="constant", cval=-np.inf)
        undecided = mask & (key < big) & (key >= small)
        del small
    else:
        undecided = mask & (key < big)
    del big
    pos = np.argwhere(undecided)
    if len(pos):
        best = np.full(len(pos), -np.inf)
        shape = np.asarray(key.shape)
        for off in np.argwhere(ball(r, "ball")) - r:
            if np.all(np.abs(off) <= ri):
                continue  # inside the inscribed box: already no larger there
            q = pos + off
            ok = np.all((q >= 0) & (q < shape), axis=1)
            v = np.full(len(pos), -np.inf)
            v[ok] = key[tuple(q[ok].T)]
            np.maximum(best, v, out=best)
        win = key[tuple(pos.T)] >= best
        cand[tuple(pos[win].T)] = True
    return cand


def squared_edt(mask):
    """Squared Euclidean distance of every voxel of ``mask`` to the nearest False voxel (float64)."""
    if _EDT is not None:
        return _EDT.edtsq(mask, black_border=False, parallel=1).astype(np.float64)
    d = ndi.distance_transform_edt(mask, return_distances=True)
    return np.multiply(d, d, out=d)


def pick_block(block, origin, core_lo, core_hi, *, threshold, spacing, cap, mode, full_shape):
    """Picks whose position lies in ``[core_lo, core_hi)`` (global voxel indices).

    ``block`` is the score array covering ``origin .. origin + block.shape``
    (core plus whatever halo exists). Returns an ``(n, 4)`` array z, y, x, score.
    """
    score = np.asarray(block)
    mask = score >= threshold
    empty = np.zeros((0, 4))
    if not mask.any():
        return empty
    r = int(math.floor(spacing))
    if mode == "peaks":
        if mask.all():  # no background within reach: scipy's EDT is undefined here
            edt2 = np.full(mask.shape, float(cap * cap))
        else:
            edt2 = squared_edt(mask)
            np.rint(edt2, out=edt2)  # integer squared distance, capped (in place: memory)
            np.minimum(edt2, cap * cap, out=edt2)
        edt2 += squash(score)
        key = edt2
        footprint = ball(r, "ball")
        metric = 2
    else:  # nms on the score
        key = np.where(mask, score.astype(np.float64), -np.inf)
        footprint = ball(r, "box")
        metric = np.inf
    if r > 2 and metric == 2:
        cand = ball_maxima(key, mask, r)
    elif r > 0:
        mx = ndi.maximum_filter(key, footprint=footprint, mode="constant", cval=-np.inf)
        cand = mask & (key == mx)
    else:
        cand = mask.copy()
    # only candidates within `spacing` of the core can matter for ties
    lo = np.maximum(np.asarray(core_lo) - np.asarray(origin) - r, 0)
    hi = np.minimum(np.asarray(core_hi) - np.asarray(origin) + r, score.shape)
    sub = tuple(slice(a, b) for a, b in zip(lo, hi))
    pos = np.argwhere(cand[sub]) + lo
    if len(pos) == 0:
        return empty
    k = key[tuple(pos.T)]
    gpos = pos + np.asarray(origin)
    gidx = np.ravel_multi_index(tuple(gpos.T), full_shape)
    keep = np.ones(len(pos), bool)
    # Candidates within r of each other lie in each other's footprint, so their keys are equal: of
    # such ties the lowest global index is kept. Untied candidates are more than r apart, at most one
    # per (r+1)^3 voxels; more than that means bulk ties (a flat plateau makes every voxel a candidate),
    # where listing the pairs, (2r+1)^3 per candidate, ran out of memory. There a separable minimum
    # filter of the indices over the same box gives the same answer in block-sized memory (nms's box
    # metric only); sparse candidates keep the pair list, which is cheaper than a filter pass.
    dense = len(pos) * (r + 1) ** 3 > math.prod(hi - lo)
    if r > 0 and len(pos) > 1 and metric == np.inf and dense:
        big = math.prod(full_shape)   # above every index; a cval of int64's maximum overflows as a float
        local = pos - lo
        g = np.full(tuple(hi - lo), big, np.int64)
        g[tuple(local.T)] = gidx
        lowest = ndi.minimum_filter(g, size=2 * r + 1, mode="constant", cval=big)
        keep = lowest[tuple(local.T)] == gidx
    elif r > 0 and len(pos) > 1:
        pairs = cKDTree(pos).query_pairs(r=r + 1e-9, p=metric, output_type="ndarray")
        if len(pairs):
            same = k[pairs[:, 0]] == k[pairs[:, 1]]
            pairs = pairs[same]
            later = np.where(gidx[pairs[:, 0]] > gidx[pairs[:, 1]], pairs[:, 0], pairs[:, 1])
            keep[later] = False
    inside = np.all((gpos >= np.asarray(core_lo)) & (gpos < np.asarray(core_hi)), axis=1)
    sel = keep & inside
    return np.column_stack([gpos[sel].astype(float), score[tuple(pos[sel].T)].astype(float)])


def halo(spacing, cap, mode) -> int:
    """Voxels of context a block needs around its core: ``cap + 2 r`` (peaks) or ``2 r`` (nms)."""
    r = int(math.floor(spacing))
    return (cap + 2 * r) if mode == "peaks" else 2 * r


def peaks(m, *, threshold, spacing, cap, mode):
    """Picks ``(n, 4)``: z, y, x, score of one ``[z, y, x]`` map (dask), block by block with a halo.

    Examples
    --------
    >>> import dask.array as da
    >>> s = np.zeros((16, 16, 16), np.float32); s[3, 4, 5] = 1
    >>> peaks(da.from_array(s, chunks=8), threshold=0.5, spacing=2, cap=2, mode="nms").tolist()
    [[3.0, 4.0, 5.0, 1.0]]
    """
    shape = m.shape
    if one_block(m):
        zero = (0,) * m.ndim
        return pick_block(in_memory(m), zero, zero, shape, threshold=threshold, spacing=spacing, cap=cap,
                          mode=mode, full_shape=shape)
    depth = halo(spacing, cap, mode)
    bounds = chunk_bounds(m.chunks)
    tasks = []
    for idx in itertools.product(*[range(n) for n in m.numblocks]):
        lo = np.array([b[i] for b, i in zip(bounds, idx)])
        hi = np.array([b[i + 1] for b, i in zip(bounds, idx)])
        olo = np.maximum(lo - depth, 0)
        ohi = np.minimum(hi + depth, shape)
        piece = m[tuple(slice(a, b) for a, b in zip(olo, ohi))]
        tasks.append(dask.delayed(pick_block, pure=True)(
            piece, tuple(olo.tolist()), tuple(lo.tolist()), tuple(hi.tolist()), threshold=threshold,
            spacing=spacing, cap=cap, mode=mode, full_shape=shape))
    res = [r for r in dask.compute(*tasks) if len(r)]
    return np.concatenate(res) if res else np.zeros((0, 4))


def class_maps(s, classes, name="scoremap"):
    """``[(class, [z, y, x] map)]`` of a ``[z, y, x]`` (class 1) or ``[c, z, y, x]`` map (default: all but 0).

    Examples
    --------
    >>> [c for c, _ in class_maps(np.zeros((3, 4, 4, 4)), None)]
    [1, 2]
    """
    if s.ndim not in (3, 4):
        raise ShapeError(f"{name} must be [z, y, x] or [c, z, y, x], got {s.ndim} dimensions")
    if s.ndim == 3:
        return [(1, s)]
    cls_list = list(range(1, s.shape[0])) if classes is None else [int(c) for c in classes]
    if any(c < 0 or c >= s.shape[0] for c in cls_list):
        raise ValueProblem(f"classes {cls_list} out of range for {s.shape[0]} score channels")
    return [(c, s[c]) for c in cls_list]


def picks_frame(c, arr, size=None, top_k=None):
    """The picks of class ``c`` as a frame, best score first (ties: smaller z, y, x), at most ``top_k``.

    Examples
    --------
    >>> picks_frame(1, np.array([[1.0, 2, 3, 0.5], [4, 5, 6, 0.9]]))[["x", "score"]].values.tolist()
    [[6.0, 0.9], [3.0, 0.5]]
    """
    order = np.lexsort((arr[:, 2], arr[:, 1], arr[:, 0], -arr[:, 3])) if len(arr) else np.zeros(0, int)
    if top_k is not None:
        order = order[:int(top_k)]
    arr = arr[order]
    cols = {"class_label": np.full(len(arr), c), "x": arr[:, 2], "y": arr[:, 1], "z": arr[:, 0],
            "score": arr[:, 3]}
    if size is not None:
        cols["size"] = size[order]
    return pd.DataFrame(cols)
