"""Multi-feature segmentation: N one-feature models on M tomograms, competition, one label map each.

This is the EMAN2 / Ais workflow (one small network per feature: membranes,
carbon, actin, microtubules, ribosomes...) on the Dask path of the 3D
network. Every (tomogram, model) pair becomes slice-wise prediction tasks
(:func:`tomochunk.nn.slices.segment_slices`); the models' maps of a
tomogram then compete slab by slab and the label slabs are stored, for all
tomograms at once, in **one** distributed computation. Each tomogram's
labels are then written as an OME-Zarr label store (levels 1x, 2x, ...) with
``attrs["classes"] = {label: model title}``. Stores already complete are
skipped, so a rerun after an interruption only does what is missing.

This module holds the computing parts (the competition); the workflow that
reads tomograms and writes stores is :mod:`tomochunk.workflows.features`
(``segment_features`` and ``output_path`` are forwarded from here).

Competition (per voxel, models ``i = 1..N`` with maps ``p_i``)
    1. Ais' emit/absorb (:func:`tomochunk.ops.interactions.compete`): where a
       model marked ``emit`` has a higher value than a model marked ``absorb``,
       the absorbing model's value is set to 0.
    2. Interactions (:func:`tomochunk.ops.interactions.interact`), optional:
       a child map is kept only near (``colocalize``) or away from (``avoid``)
       its thresholded parent map.
    3. EMAN2's argmax against a background threshold: the voxel gets label
       ``1 + argmax_i s_i`` over the models with ``p_i >= threshold_i``, else 0.
       By default ``s_i = p_i`` (EMAN2, Ais). With ``object_weight`` ``w > 0``
       the score is ``s_i = (1 - w) p_i + w * mean(p_i over the object)``,
       where the object is the connected component of ``p_i >= threshold_i``
       holding the voxel: a model's confident, extended object then wins over
       another model's weak, fragmentary response on the same voxels (the
       cross-talk of one-feature models, e.g. a particle model firing on
       filament cross-sections), while voxel scores still draw the boundary
       between touching objects. In :func:`segment_features` objects are
       found per z-slab plus a halo of ``object_halo`` slices.
"""

from __future__ import annotations

import importlib

import numpy as np
from scipy import ndimage as ndi

from .._log import get_logger
from ..errors import ValueProblem
from ..ops.interactions import compete, interact

log = get_logger(__name__)


def object_mean(prob, mask):
    """Each voxel of ``mask`` gets the mean of ``prob`` over its connected component (0 outside).

    Examples
    --------
    >>> object_mean(np.array([0.9, 0.7, 0.0, 0.6]), np.array([1, 1, 0, 1], bool)).astype(float).round(2).tolist()
    [0.8, 0.8, 0.0, 0.6]
    """
    cc, n = ndi.label(mask)
    if n == 0:
        return np.zeros(np.shape(prob), np.float32)
    means = ndi.mean(np.asarray(prob, np.float32), cc, np.arange(1, n + 1))
    return np.concatenate([[0.0], means]).astype(np.float32)[cc]


def compete_maps(probs, thresholds, *, emit=None, absorb=None, object_weight=0.0):
    """Competition of N feature maps: ``uint8`` labels (0 = background, ``i + 1`` = model ``i``).

    Parameters
    ----------
    probs : ndarray
        ``[n, ...]`` probability maps, one per model.
    thresholds : sequence of float
        Per-model background threshold (a voxel is a candidate for model ``i``
        where ``probs[i] >= thresholds[i]``).
    emit, absorb : sequence of bool, optional
        Ais flags: absorbing maps are zeroed where an emitting map is higher.
    object_weight : float
        0 (default): the highest candidate probability wins (EMAN2, Ais).
        ``w`` in (0, 1]: candidates compete with ``(1 - w) p + w * object
        mean of p`` (see the module notes), so confident objects beat weak
        fragments of another model.

    Examples
    --------
    >>> p = np.array([[0.9, 0.2, 0.6], [0.7, 0.1, 0.8]])
    >>> compete_maps(p, [0.5, 0.5]).tolist()
    [1, 0, 2]
    >>> p = np.array([[0.9, 0.9, 0.9, 0.6], [0.0, 0.0, 0.0, 0.7]])   # model 1 fires on a voxel of model 0's object
    >>> compete_maps(p, [0.5, 0.5]).tolist(), compete_maps(p, [0.5, 0.5], object_weight=0.5).tolist()
    ([1, 1, 1, 2], [1, 1, 1, 1])
    """
    p = np.array(probs, dtype=np.float32, copy=True)
    n = p.shape[0]
    if n > 254:
        raise ValueProblem(f"at most 254 models compete in a uint8 label map, got {n}")
    thr = np.asarray(thresholds, np.float32).reshape((n,) + (1,) * (p.ndim - 1))
    emit = np.zeros(n, bool) if emit is None else np.asarray(emit, bool)
    absorb = np.zeros(n, bool) if absorb is None else np.asarray(absorb, bool)
    for i in np.flatnonzero(absorb):
        others = [j for j in np.flatnonzero(emit) if j != i]
        if others:
            p[i][p[others].max(axis=0) > p[i]] = 0.0
    if not 0.0 <= float(object_weight) <= 1.0:
        raise ValueProblem(f"object_weight must be in [0, 1], got {object_weight}")
    above = p >= thr
    if object_weight > 0:
        w = np.float32(object_weight)
        p = np.stack([(1 - w) * p[i] + w * object_mean(p[i], above[i]) for i in range(n)])
    masked = np.where(above, p, -1.0)
    lab = (np.argmax(masked, axis=0) + 1).astype(np.uint8)
    lab[~above.any(axis=0)] = 0
    return lab


def compete_blocks(*blocks, thresholds, object_weight=0.0):
    """:func:`compete_maps` on one block of each model's map (a ``map_blocks`` function).

    Examples
    --------
    >>> compete_blocks(np.array([0.9, 0.1]), np.array([0.2, 0.8]), thresholds=[0.5, 0.5]).tolist()
    [1, 2]
    """
    return compete_maps(np.stack(blocks), thresholds, object_weight=object_weight)


def combine_maps(maps, infos, interactions, voxel_size):
    """Steps 1 and 2 of the competition on lazy ``[z, y, x]`` maps (step 3, :func:`compete_blocks`, is
    blockwise): emit/absorb between models, then the ``interactions``."""
    emit = [i for i, info in enumerate(infos) if info.emit]
    absorb = [i for i, info in enumerate(infos) if info.absorb]
    if emit and absorb:
        maps = compete(list(maps), emit=emit, absorb=absorb)
    maps = list(maps)
    titles = [info.title for info in infos]
    for spec in interactions or ():
        spec = dict(spec)
        c, p = (_index(spec.get(k), titles) for k in ("child", "parent"))
        radius = float(spec.get("radius", 0.0)) / float(voxel_size or 1.0)   # Å -> voxels
        maps[c] = interact(maps[c], maps[p], mode=spec.get("mode", "colocalize"), radius=radius,
                           threshold=float(spec.get("threshold", infos[p].threshold)))
    return maps


def _index(key, titles):
    if isinstance(key, (int, np.integer)) and 0 <= int(key) < len(titles):
        return int(key)
    if key in titles:
        return titles.index(key)
    raise ValueProblem(f"interaction names model {key!r}; models are {titles} (or indices 0..{len(titles) - 1})")


_MOVED = {"segment_features": "tomochunk.workflows.features", "output_path": "tomochunk.workflows.features"}


def __getattr__(name):
    """Lazy forwards for names that moved to a higher layer (importing them here would be a cycle)."""
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
