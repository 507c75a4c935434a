"""Particle picking on score maps: Ais-style peaks, component centroids, heatmap NMS.

Every mode is distributed over blocks read with a halo, and a pick belongs to
the block whose core (not halo) holds it, so the result is the same as running
the algorithm on the whole array in one process:

``"peaks"`` (Ais)
    Threshold, Euclidean distance transform of the foreground (capped at
    ``cap`` voxels, which keeps it exact within a finite halo), then local
    maxima at least ``min_spacing`` apart. Ties (plateaus of the distance)
    are broken by the score, then by the smaller ``(z, y, x)`` index.
``"centroid"``
    One pick per connected component of the thresholded map at its centroid.
``"nms"``
    3D max-pool non-maximum suppression of the score itself (a
    ``(2 min_spacing + 1)³`` window), as used to decode heatmaps, then the
    ``top_k`` best.

A peak is a voxel whose key (distance, score) is the maximum of its
neighbourhood and that no other such voxel of equal key and smaller index
within ``min_spacing`` precedes; this only depends on a neighbourhood of
``2 min_spacing``, hence the halo. Components smaller than ``min_size`` voxels
are dropped using the distributed :func:`~tomochunk.ops.label.label`.
"""

from __future__ import annotations

import importlib
import itertools
import math

import numpy as np

from .._log import get_logger
from ..errors import ShapeError, ValueProblem
from ._arrays import as_dask, object_frame
from .label import _plan, _relabel, _structure

try:  # seung-lab's EDT: the same squared distances as scipy's, ~6x faster (sparse score maps)
    import edt as _EDT
except ImportError:  # pragma: no cover - a declared dependency
    _EDT = None

log = get_logger(__name__)

__all__ = ["pick"]


def _ball(r: int, metric: str):
    if metric == "box":
        return np.ones((2 * r + 1,) * 3, bool)
    z, y, x = np.ogrid[-r:r + 1, -r:r + 1, -r:r + 1]
    return z * z + y * y + x * x <= r * r + 1e-9


def _squash(score):
    # monotonic map of any float score into (0, 1): orders ties of the distance by score
    return 0.5 + np.arctan(np.asarray(score, np.float64)) / np.pi


def _ball_maxima(key, mask, r):
    """``mask & (key == max of key over a ball of radius r)``, without a slow non-separable filter.

    The bounding box (separable filter) proves most maxima, the inscribed box
    rules most other voxels out, and only the few undecided voxels are checked
    against every offset of the ball.
    """
    from scipy import ndimage as ndi

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
        for off in np.argwhere(_ball(r, "ball")) - r:
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


def _squared_edt(mask):
    """Squared Euclidean distance of every voxel of ``mask`` to the nearest False voxel (float64)."""
    if _EDT is not None:
        return _EDT.edtsq(mask, black_border=False, parallel=1).astype(np.float64)
    from scipy import ndimage as ndi

    d = ndi.distance_transform_edt(mask, return_distances=True)
    return np.multiply(d, d, out=d)


def _pick_block(block, origin, core_lo, core_hi, *, threshold, spacing, cap, mode, full_shape):
    """Picks whose position lies in ``[core_lo, core_hi)`` (global voxel indices).

    ``block`` is the score array covering ``origin .. origin + block.shape``
    (core plus whatever halo exists). Returns an ``(n, 4)`` array z, y, x, score.
    """
    from scipy import ndimage as ndi
    from scipy.spatial import cKDTree

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
            edt2 = _squared_edt(mask)
            np.rint(edt2, out=edt2)  # integer squared distance, capped (in place: memory)
            np.minimum(edt2, cap * cap, out=edt2)
        edt2 += _squash(score)
        key = edt2
        footprint = _ball(r, "ball")
        metric = 2
    else:  # nms on the score
        key = np.where(mask, score.astype(np.float64), -np.inf)
        footprint = _ball(r, "box")
        metric = np.inf
    if r > 2 and metric == 2:
        cand = _ball_maxima(key, mask, r)
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
    if r > 0 and len(pos) > 1:
        pairs = cKDTree(pos).query_pairs(r=r + 1e-9, p=metric, output_type="ndarray")
        if len(pairs):
            same = k[pairs[:, 0]] == k[pairs[:, 1]]
            pairs = pairs[same]
            later = np.where(gidx[pairs[:, 0]] > gidx[pairs[:, 1]], pairs[:, 0], pairs[:, 1])
            keep[later] = False
    inside = np.all((gpos >= np.asarray(core_lo)) & (gpos < np.asarray(core_hi)), axis=1)
    sel = keep & inside
    return np.column_stack([gpos[sel].astype(float), score[tuple(pos[sel].T)].astype(float)])


def _sizes_and_lookup(mask_block, structure, table, points):
    """Component sizes present in one block and the component label at ``points`` (local)."""
    lab = _relabel(mask_block, structure, table)
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    at = lab[tuple(points.T)] if len(points) else np.zeros(0, lab.dtype)
    return ids, counts, at


def _peaks_3d(m, *, threshold, spacing, cap, mode):
    import dask

    r = int(math.floor(spacing))
    depth = (cap + 2 * r) if mode == "peaks" else 2 * r
    shape = m.shape
    starts = [np.concatenate([[0], np.cumsum(c)]) for c in m.chunks]
    tasks = []
    for idx in itertools.product(*[range(n) for n in m.numblocks]):
        lo = np.array([s[i] for s, i in zip(starts, idx)])
        hi = np.array([s[i + 1] for s, i in zip(starts, idx)])
        olo = np.maximum(lo - depth, 0)
        ohi = np.minimum(hi + depth, shape)
        piece = m[tuple(slice(a, b) for a, b in zip(olo, ohi))]
        tasks.append(dask.delayed(_pick_block, pure=True)(
            piece, tuple(olo.tolist()), tuple(lo.tolist()), tuple(hi.tolist()), threshold=threshold,
            spacing=spacing, cap=cap, mode=mode, full_shape=shape))
    res = [r for r in dask.compute(*tasks) if len(r)]
    return np.concatenate(res) if res else np.zeros((0, 4))


def _component_filter(m, threshold, picks, min_size, connectivity):
    """Keep picks whose thresholded component has at least ``min_size`` voxels."""
    import dask

    if len(picks) == 0:
        return picks
    mask = m >= threshold
    structure = _structure(3, None, connectivity)
    plan = _plan(mask, structure)
    starts = [np.concatenate([[0], np.cumsum(c)]) for c in mask.chunks]
    blk = np.stack([np.searchsorted(s, picks[:, ax].astype(np.int64), side="right") - 1
                    for ax, s in enumerate(starts)], axis=1)
    md = mask.to_delayed()
    tasks, owners = [], []
    for idx in itertools.product(*[range(n) for n in mask.numblocks]):
        sel = np.flatnonzero(np.all(blk == np.array(idx), axis=1))
        lo = np.array([s[i] for s, i in zip(starts, idx)])
        pts = picks[sel, :3].astype(np.int64) - lo
        tasks.append(dask.delayed(_sizes_and_lookup, pure=True)(md[idx], structure, plan.tables[idx], pts))
        owners.append(sel)
    sizes = np.zeros(plan.n + 1, np.int64)
    lab = np.zeros(len(picks), np.int64)
    for (ids, counts, at), sel in zip(dask.compute(*tasks), owners):
        np.add.at(sizes, ids, counts)
        lab[sel] = at
    return picks[sizes[lab] >= min_size]


def _centroids(m, threshold, min_size, connectivity):
    import dask

    from .label import _combine_stats, _stats_tasks

    mask = m >= threshold
    plan = _plan(mask, _structure(3, None, connectivity), persist=None)
    if plan.n == 0:
        return np.zeros((0, 4)), np.zeros(0, np.int64)
    parts = dask.compute(*_stats_tasks(plan.labels(), m, None))
    obj, _ = _combine_stats(parts, 3, True, False)
    obj = obj[obj["size"] >= min_size]
    n = obj["size"].to_numpy()
    arr = np.column_stack([obj["s0"] / n, obj["s1"] / n, obj["s2"] / n, obj["imax"]])
    return arr, n


def pick(scoremap, *, threshold: float = 0.5, min_size: float = 1, min_spacing: float = 5, margin: float = 0,
         mode: str = "peaks", top_k: int | None = None, voxel_size: float | None = None,
         units: str = "voxel", classes=None, connectivity: int = 1, cap: float | None = None):
    """Pick particles on a lazy score map.

    Parameters
    ----------
    scoremap : dask.array.Array, xarray.DataArray or numpy.ndarray
        ``[z, y, x]`` map of one class, or ``[c, z, y, x]`` score map (class 0
        = background is skipped).
    threshold : float
        Foreground is ``score >= threshold``.
    min_size : float
        Components of the thresholded map with fewer voxels (Å³ with
        ``units="angstrom"``) are dropped.
    min_spacing : float
        Picks are more than this apart (voxels or Å); the NMS window is
        ``2 min_spacing + 1``.
    margin : float
        Picks closer than this to the volume border are dropped.
    mode : {"peaks", "centroid", "nms"}
        See the module documentation.
    top_k : int, optional
        Keep the ``top_k`` best picks per class (by score).
    voxel_size : float, optional
        Å per voxel (default: from the xarray input); needed with ``units="angstrom"``.
    units : {"voxel", "angstrom"}
        Units of ``min_spacing``, ``margin`` and ``min_size``. Output
        coordinates are always voxels, with ``attrs["voxel_size"]``.
    classes : iterable of int, optional
        Classes of a ``[c, z, y, x]`` map to pick (default: all but 0).
    connectivity : int
        Connectivity of the components used by ``min_size`` and ``"centroid"``.
    cap : float, optional
        Distance-transform cap for ``"peaks"`` (default ``max(min_spacing, 1)``);
        larger values follow the shape of large blobs further at the cost of a
        wider halo.

    Returns
    -------
    pandas.DataFrame
        ``class_label, x, y, z, score, [size], obj_id``.

    Examples
    --------
    >>> import numpy as np
    >>> s = np.zeros((32, 32, 32), np.float32); s[10:15, 10:15, 10:15] = 0.9
    >>> pick(s, threshold=0.5, min_spacing=4)[["x", "y", "z"]].values.tolist()
    [[12.0, 12.0, 12.0]]
    """
    import pandas as pd

    s, vs = as_dask(scoremap, "scoremap")
    vs = voxel_size if voxel_size is not None else vs
    if s.ndim not in (3, 4):
        raise ShapeError(f"scoremap must be [z, y, x] or [c, z, y, x], got {s.ndim} dimensions")
    if mode not in ("peaks", "centroid", "nms"):
        raise ValueProblem(f"mode must be 'peaks', 'centroid' or 'nms', got {mode!r}")
    if units not in ("voxel", "angstrom"):
        raise ValueProblem(f"units must be 'voxel' or 'angstrom', got {units!r}")
    if units == "angstrom":
        if not vs:
            raise ValueProblem("units='angstrom' needs voxel_size (Å per voxel)")
        min_spacing, margin, min_size = min_spacing / vs, margin / vs, min_size / vs ** 3
    if min_spacing < 0 or margin < 0:
        raise ValueProblem("min_spacing and margin must be >= 0")
    if top_k is not None and int(top_k) < 0:
        raise ValueProblem(f"top_k must be >= 0, got {top_k}")
    cap_v = int(math.ceil(cap if cap is not None else max(min_spacing, 1)))
    if s.ndim == 4:
        cls_list = list(range(1, s.shape[0])) if classes is None else [int(c) for c in classes]
        if any(c < 0 or c >= s.shape[0] for c in cls_list):
            raise ValueProblem(f"classes {cls_list} out of range for {s.shape[0]} score channels")
        maps = [(c, s[c]) for c in cls_list]
    else:
        maps = [(1, s)]
    frames = []
    min_size_v = int(math.ceil(min_size))
    for c, m in maps:
        size = None
        if mode == "centroid":
            arr, size = _centroids(m, threshold, min_size_v, connectivity)
        else:
            arr = _peaks_3d(m, threshold=threshold, spacing=min_spacing, cap=cap_v, mode=mode)
            if min_size_v > 1:
                arr = _component_filter(m, threshold, arr, min_size_v, connectivity)
        if margin > 0 and len(arr):
            ok = np.all((arr[:, :3] >= margin) & (arr[:, :3] <= np.asarray(m.shape) - 1 - margin), axis=1)
            arr = arr[ok]
            size = None if size is None else size[ok]
        order = np.lexsort((arr[:, 2], arr[:, 1], arr[:, 0], -arr[:, 3])) if len(arr) else np.zeros(0, int)
        if top_k is not None:
            order = order[:int(top_k)]
        arr = arr[order]
        cols = {"class_label": np.full(len(arr), c), "x": arr[:, 2], "y": arr[:, 1], "z": arr[:, 0],
                "score": arr[:, 3]}
        if size is not None:
            cols["size"] = size[order]
        frames.append(pd.DataFrame(cols))
        log.info("pick: class %d, %d picks (%s)", c, len(arr), mode)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df["obj_id"] = np.arange(1, len(df) + 1)
    return object_frame(df, vs)


def __getattr__(name: str):
    # pick_inputs (file in, objects out) moved up to tomochunk.workflows.picking; a lazy forward
    # keeps the old import path without a static import against the layers
    if name == "pick_inputs":
        return getattr(importlib.import_module("tomochunk.workflows.picking"), name)
    raise AttributeError(f"module 'tomochunk.ops.pick' has no attribute {name!r}")
