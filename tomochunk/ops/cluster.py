"""Objects from a label map: DeepFinder-style mean-shift clustering, distributed.

DeepFinder's ``Cluster`` runs scikit-learn ``MeanShift(bandwidth=radius,
bin_seeding=True)`` over the coordinates of every labelled voxel of the whole
tomogram in one process, then gives each cluster the class most of its voxels
carry and its voxel count as ``cluster_size``. Here the same behaviour is
reached per connected component:

1. the foreground is labelled with the distributed :func:`~tomochunk.ops.label.label`
   and reduced blockwise to per-component statistics (centroid, size, class
   counts, bounding box);
2. a component that fits in a ``(2 radius + 1)`` box is one cluster (mean
   shift with that bandwidth converges to a single mode on it), so its centroid
   and statistics are the object: no voxel is gathered;
3. larger components (touching objects, elongated blobs) have their voxels
   extracted from the blocks they cover and are split by mean shift with
   DeepFinder's settings, one component per task, on the workers.

Touching objects are therefore still split, and components far apart are never
merged, which is what the global mean shift does when objects are further than
the bandwidth apart.
"""

from __future__ import annotations

import itertools
import os

import dask
import numpy as np
import pandas as pd

from .._blocks import chunk_bounds
from .._log import get_logger
from ..errors import ShapeError, ValueProblem
from ..parallel import current_client, n_workers
from . import _ccl
from ._arrays import object_frame

log = get_logger(__name__)

__all__ = ["cluster"]


def _meanshift(coords, radius, max_iter: int = 300):
    """Flat-kernel mean shift with bin seeding: scikit-learn's ``MeanShift(bandwidth=radius,
    bin_seeding=True)`` steps, vectorised in numpy for the few hundred voxels of one component
    (scikit-learn's per-call overhead dominates there); large components use scikit-learn."""
    x = np.asarray(coords, np.float64)
    if len(x) == 1:
        return x.copy(), np.zeros(1, np.int64)
    if len(x) > 20000:
        from sklearn.cluster import MeanShift

        ms = MeanShift(bandwidth=float(radius), bin_seeding=True).fit(x)
        return ms.cluster_centers_, ms.labels_
    bw = float(radius)
    seeds = np.unique(np.round(x / bw), axis=0) * bw  # bins of size bandwidth, >= 1 point each
    if len(seeds) == len(x):
        seeds = x.copy()
    r2 = bw * bw
    means = seeds.copy()
    counts = np.zeros(len(seeds), np.int64)
    active = np.ones(len(seeds), bool)
    for _ in range(max_iter + 1):
        idx = np.flatnonzero(active)
        if not idx.size:
            break
        d2 = _sq_dist(means[idx], x) <= r2
        n = d2.sum(1)
        empty = n == 0
        new = (d2 @ x) / np.maximum(n, 1)[:, None]
        shift = np.linalg.norm(new - means[idx], axis=1)
        counts[idx] = n
        upd = ~empty
        means[idx[upd]] = new[upd]
        active[idx[empty | (shift <= 1e-3 * bw)]] = False
    keep = counts > 0
    centres, inten = means[keep], counts[keep]
    # strongest first (ties: larger coordinates first), drop centres within bandwidth of a stronger one
    uniq, first = np.unique(centres, axis=0, return_index=True)
    inten = inten[first]
    order = np.lexsort(tuple(uniq[:, k] for k in range(uniq.shape[1] - 1, -1, -1)) + (inten,))[::-1]
    cand = uniq[order]
    taken = np.zeros(len(cand), bool)
    out = []
    for i in range(len(cand)):
        if taken[i]:
            continue
        out.append(cand[i])
        taken |= ((cand - cand[i]) ** 2).sum(1) <= r2
    centres = np.array(out)
    labels = np.argmin(_sq_dist(x, centres), axis=1)
    return centres, labels


def _sq_dist(a, b):
    """``((a[:, None] - b[None]) ** 2).sum(-1)``, summed in the same order (so bit-identical), but
    one axis at a time: ~3x faster, without the ``(n, m, 3)`` temporaries and the short-axis reduction."""
    d = np.subtract.outer(a[:, 0], b[:, 0])
    d *= d
    for k in range(1, a.shape[1]):
        t = np.subtract.outer(a[:, k], b[:, k])
        t *= t
        d += t
    return d


def _extract(mask_block, lm_block, structure, table, wanted, origin, lab=None):
    """Coordinates and class values of the voxels of the ``wanted`` components in one block.

    ``lab``: the block's global labels when they are at hand already (one-block map).
    """
    if lab is None:
        lab = _ccl.relabel(mask_block, structure, table)
    sel = np.isin(lab, wanted)
    if not sel.any():
        return None
    pos = np.nonzero(sel)
    coords = np.stack([p + o for p, o in zip(pos, origin)], axis=1).astype(np.int32)
    return lab[pos].astype(np.int64), coords, np.asarray(lm_block)[pos].astype(np.int64)


def _split_group(parts, labels, radius):
    """Run mean shift on each component of ``labels``; return one row per cluster."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return []
    lab = np.concatenate([p[0] for p in parts])
    coords = np.concatenate([p[1] for p in parts])
    cls = np.concatenate([p[2] for p in parts])
    keep = np.isin(lab, labels)
    lab, coords, cls = lab[keep], coords[keep], cls[keep]
    order = np.argsort(lab, kind="stable")
    lab, coords, cls = lab[order], coords[order], cls[order]
    bounds = np.flatnonzero(np.diff(lab)) + 1
    rows = []
    for lo, hi in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(lab)]])):
        # DeepFinder fits voxel coordinates in array order (z, y, x)
        centers, members = _meanshift(coords[lo:hi], radius)
        c = cls[lo:hi]
        for k in range(len(centers)):
            m = members == k
            n = int(m.sum())
            if n == 0:
                continue
            votes = np.bincount(c[m])
            votes[0] = 0
            rows.append((int(np.argmax(votes)), *centers[k], n, int(lab[lo])))
    return rows


def cluster(labelmap, *, radius, classes=None, min_size: int = 1, method: str = "meanshift",
            connectivity: int = 1, voxel_size=None):
    """Turn a label map into an object list (DeepFinder's ``Cluster``, distributed).

    Parameters
    ----------
    labelmap : dask.array.Array, xarray.DataArray or numpy.ndarray
        Integer ``[z, y, x]`` class map, 0 = background.
    radius : float
        Mean-shift bandwidth in voxels: the average object radius
        (DeepFinder's ``clustRadius``).
    classes : iterable of int, optional
        Classes to extract (default: all non-zero).
    min_size : int
        Clusters with fewer voxels are dropped (DeepFinder keeps all).
    method : {"meanshift", "cc"}
        ``"meanshift"`` splits large components by mean shift as DeepFinder
        does; ``"cc"`` gives one object per connected component.
    connectivity : int
        Connectivity of the components (1, 2 or 3).
    voxel_size : float, optional
        Å per voxel for ``attrs["voxel_size"]`` (default: from the xarray input).

    Returns
    -------
    pandas.DataFrame
        ``class_label, x, y, z`` (voxels), ``size`` (cluster size in voxels),
        ``obj_id``; empty (with those columns) for an empty map.

    Examples
    --------
    >>> import numpy as np
    >>> lm = np.zeros((20, 20, 20), np.uint8); lm[5:8, 5:8, 5:8] = 2
    >>> cluster(lm, radius=3)[["class_label", "x", "y", "z", "size"]].values.tolist()
    [[2.0, 6.0, 6.0, 6.0, 27.0]]
    """
    source = (getattr(labelmap, "attrs", None) or {}).get("source")
    lm, vs = _ccl.as_input(labelmap, "labelmap")
    vs = voxel_size if voxel_size is not None else vs
    if not np.issubdtype(lm.dtype, np.integer) and lm.dtype != bool:
        # a float map here is almost always the tomogram itself: its store was never segmented
        raise ShapeError(("" if source else "labelmap ") + f"is a {lm.dtype} volume, not an integer label map: segment it first "
                         "(tomochunk segment ... writes labels/classes), or pick its score map", source)
    if lm.ndim != 3:
        raise ShapeError(f"labelmap must be 3D [z, y, x], got {lm.ndim} dimensions")
    try:
        radius = float(radius)
    except (TypeError, ValueError):
        raise ValueProblem(f"radius must be a number, got {radius!r}") from None
    if not radius > 0:
        raise ValueProblem(f"radius must be > 0, got {radius}")
    if method not in ("meanshift", "cc"):
        raise ValueProblem(f"method must be 'meanshift' or 'cc', got {method!r}")
    lm = lm.astype(np.int64) if lm.dtype == bool else lm
    if _ccl.one_block(lm):  # the whole map is one block: numpy from here on, no task graph
        lm = _ccl.in_memory(lm)
        if classes is not None:
            lm = np.where(np.isin(lm, classes), lm, 0)
    elif classes is not None:
        lm = lm.map_blocks(lambda b, c: np.where(np.isin(b, c), b, 0), classes, dtype=lm.dtype)
    mask = lm > 0
    structure = _ccl.structure(3, None, connectivity)
    plan = _ccl.plan(mask, structure, persist=None)
    cols = ["class_label", "x", "y", "z", "size", "obj_id"]
    if plan.n == 0:
        return object_frame({c: [] for c in cols}, vs, lm.shape)
    parts = _ccl.block_parts(plan.labels() if plan.array is None else plan.array, None, lm)
    obj, cls = _ccl.combine_stats(parts, 3, False, True)
    props = _ccl.stats_frame(obj, cls, 3, vs)
    if method == "meanshift":
        extent = np.stack([props[f"bbox_{a}1"] - props[f"bbox_{a}0"] for a in "zyx"], axis=1).max(axis=1)
        big = extent > 2 * radius + 1
    else:
        big = np.zeros(len(props), bool)
    small = props.loc[~big, cols]
    rows = []
    if big.any():
        wanted = np.sort(props.loc[big, "obj_id"].to_numpy())
        if plan.array is not None:
            ext = _extract(None, lm, structure, None, wanted, (0, 0, 0), lab=plan.array)
            rows = _split_group([ext], wanted, radius)
        else:
            rows = _split_blocked(mask, lm, plan, props, big, wanted, radius)
    if rows:
        arr = np.array(rows, dtype=float)
        split = pd.DataFrame({"class_label": arr[:, 0].astype(np.int64), "x": arr[:, 3], "y": arr[:, 2],
                              "z": arr[:, 1], "size": arr[:, 4].astype(np.int64), "obj_id": 0})
        small = pd.concat([small, split], ignore_index=True)
    out = small[small["size"] >= int(min_size)]
    out = out.sort_values(["z", "y", "x"], kind="stable").reset_index(drop=True)
    out["obj_id"] = np.arange(1, len(out) + 1)
    log.info("cluster: %d components, %d split by mean shift, %d objects", plan.n, int(big.sum()), len(out))
    return object_frame(out[cols], vs, lm.shape)


def _split_blocked(mask, lm, plan, props, big, wanted, radius):
    """Mean shift over the large components of a blocked map: extract per block, split per group."""
    bb = props.loc[big, [f"bbox_{a}{e}" for e in "01" for a in "zyx"]].to_numpy()
    bounds = chunk_bounds(mask.chunks)
    md, ld = mask.to_delayed(), lm.to_delayed()
    extracts = []
    for idx in itertools.product(*[range(n) for n in mask.numblocks]):
        lo = np.array([b[i] for b, i in zip(bounds, idx)])
        hi = np.array([b[i + 1] for b, i in zip(bounds, idx)])
        if not np.any(np.all((bb[:, :3] < hi) & (bb[:, 3:] > lo), axis=1)):
            continue  # no large component touches this block
        extracts.append(dask.delayed(_extract, pure=True)(md[idx], ld[idx], plan.structure, plan.tables[idx],
                                                          wanted, tuple(int(v) for v in lo)))
    # balance the mean-shift work: groups of components with similar voxel totals
    sizes = props.loc[big, "size"].to_numpy()
    order = np.argsort(props.loc[big, "obj_id"].to_numpy())
    ngroups = max(1, min(len(wanted), 4 * _n_workers()))
    cum = np.cumsum(sizes[order])
    grp = np.minimum((cum - 1) * ngroups // max(cum[-1], 1), ngroups - 1)
    groups = [wanted[grp == g] for g in range(ngroups) if np.any(grp == g)]
    tasks = [dask.delayed(_split_group, pure=True)(extracts, g, radius) for g in groups]
    rows = []
    for r in dask.compute(*tasks):
        rows.extend(r)
    return rows


def _n_workers() -> int:
    """Workers of the distributed client, or this machine's cores for dask's local scheduler."""
    if current_client() is not None:
        return n_workers()
    return os.cpu_count() or 1
