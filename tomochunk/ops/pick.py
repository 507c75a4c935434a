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
are dropped using the distributed :func:`~tomochunk.ops.label.label`. The block
function and the halo rule live in :mod:`tomochunk.ops._peaks`, shared with
:func:`~tomochunk.ops.heatmap.decode_heatmap`; a map that is one block is picked
directly with numpy.
"""

from __future__ import annotations

import importlib
import itertools
import math

import dask
import numpy as np
import pandas as pd

from .._blocks import chunk_bounds
from .._log import get_logger
from ..errors import ShapeError, ValueProblem
from . import _ccl
from ._arrays import object_frame
from ._peaks import class_maps, peaks, picks_frame

log = get_logger(__name__)

__all__ = ["pick"]


def _sizes_and_lookup(mask_block, structure, table, points):
    """Component sizes present in one block and the component label at ``points`` (local)."""
    lab = _ccl.relabel(mask_block, structure, table)
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    at = lab[tuple(points.T)] if len(points) else np.zeros(0, lab.dtype)
    return ids, counts, at


def _component_filter(m, threshold, picks, min_size, connectivity):
    """Keep picks whose thresholded component has at least ``min_size`` voxels."""
    if len(picks) == 0:
        return picks
    mask = m >= threshold
    structure = _ccl.structure(3, None, connectivity)
    plan = _ccl.plan(mask, structure)
    if plan.array is not None:  # one block: the labels are here already
        sizes = np.bincount(plan.array.ravel(), minlength=plan.n + 1)
        sizes[0] = 0
        return picks[sizes[plan.array[tuple(picks[:, :3].astype(np.int64).T)]] >= min_size]
    bounds = chunk_bounds(mask.chunks)
    blk = np.stack([np.searchsorted(b, picks[:, ax].astype(np.int64), side="right") - 1
                    for ax, b in enumerate(bounds)], axis=1)
    md = mask.to_delayed()
    tasks, owners = [], []
    for idx in itertools.product(*[range(n) for n in mask.numblocks]):
        sel = np.flatnonzero(np.all(blk == np.array(idx), axis=1))
        lo = np.array([b[i] for b, i in zip(bounds, idx)])
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
    mask = m >= threshold
    plan = _ccl.plan(mask, _ccl.structure(3, None, connectivity), persist=None)
    if plan.n == 0:
        return np.zeros((0, 4)), np.zeros(0, np.int64)
    parts = _ccl.block_parts(plan.labels() if plan.array is None else plan.array, m, None)
    obj, _ = _ccl.combine_stats(parts, 3, True, False)
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
    s, vs = _ccl.as_input(scoremap, "scoremap")
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
    if _ccl.one_block(s):  # read once; every step below then runs on numpy, without a task graph
        s = _ccl.in_memory(s)
    maps = class_maps(s, classes)
    frames = []
    min_size_v = int(math.ceil(min_size))
    for c, m in maps:
        size = None
        if mode == "centroid":
            arr, size = _centroids(m, threshold, min_size_v, connectivity)
        else:
            arr = peaks(m, threshold=threshold, spacing=min_spacing, cap=cap_v, mode=mode)
            if min_size_v > 1:
                arr = _component_filter(m, threshold, arr, min_size_v, connectivity)
        if margin > 0 and len(arr):
            ok = np.all((arr[:, :3] >= margin) & (arr[:, :3] <= np.asarray(m.shape) - 1 - margin), axis=1)
            arr = arr[ok]
            size = None if size is None else size[ok]
        frames.append(picks_frame(c, arr, size, top_k))
        log.info("pick: class %d, %d picks (%s)", c, len(frames[-1]), mode)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df["obj_id"] = np.arange(1, len(df) + 1)
    return object_frame(df, vs, s.shape[-3:])


def __getattr__(name: str):
    # pick_inputs (file in, objects out) moved up to tomochunk.workflows.picking; a lazy forward
    # keeps the old import path without a static import against the layers
    if name == "pick_inputs":
        return getattr(importlib.import_module("tomochunk.workflows.picking"), name)
    raise AttributeError(f"module 'tomochunk.ops.pick' has no attribute {name!r}")
