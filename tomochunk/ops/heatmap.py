"""Heatmap targets from sparse particle labels, and heatmap decoding into picks.

Targets (:func:`heatmap_targets`)
    Around every labelled centre a Gaussian ``exp(-d² / 2σ²)`` (peak 1; where
    Gaussians overlap the maximum is kept). The float heatmap is thresholded
    into a label map with this encoding, the one the PU loss
    (:class:`tomochunk.nn.pu.NNPULoss`) and ``train(..., loss="pu")`` expect:

    ===== ===============================================================
    value meaning
    ===== ===============================================================
    0     unlabeled (in the PU setting: *not* negative, just unknown)
    1     hard positive: ``heatmap >= hard``
    2     soft positive: ``soft <= heatmap < hard``; ignored by the losses
    ===== ===============================================================

    Built block by block with the shared painter (:mod:`tomochunk.ops._paint`):
    a block only places the objects whose Gaussian support (truncated where it
    falls below ``soft``, and at 3σ) touches it, so the result does not depend
    on the chunking.

Decoding (:func:`decode_heatmap`)
    3D max-pool non-maximum suppression of the score, distributed over blocks
    with a halo (the ``"nms"`` mode of :func:`tomochunk.ops.pick.pick`, whose
    engine :mod:`tomochunk.ops._peaks` both share), followed by a score threshold, z-range and border cut-offs, and a global
    top-K by score.
"""

from __future__ import annotations

import math
import warnings

import dask.array as da
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .._log import get_logger
from ..errors import ShapeError, ValueProblem
from ._arrays import object_frame
from ._ccl import as_blocked, as_input, in_memory, one_block
from ._paint import blockwise, route, stamp
from ._peaks import class_maps, peaks, picks_frame

log = get_logger(__name__)

__all__ = ["heatmap_targets", "decode_heatmap"]


def _support(sigma: float, soft: float) -> int:
    """Radius (voxels) beyond which the Gaussian is not placed."""
    r = 3.0 * sigma
    if 0 < soft < 1:
        r = max(r, sigma * math.sqrt(2.0 * math.log(1.0 / soft)))
    return int(math.ceil(r))


def _heat_block(args, origin, bshape):
    """Max of Gaussians centred at ``zyx`` (global, float) over one block."""
    zyx, sigma, radius = args
    out = np.zeros(bshape, np.float32)
    for c in zyx:
        lo = np.floor(c - radius).astype(int)
        hi = np.ceil(c + radius).astype(int) + 1
        d2 = [(np.arange(a, b) - cc) ** 2 for a, b, cc in zip(lo, hi, c)]
        g = [np.exp(-d / (2.0 * sigma * sigma)) for d in d2]
        val = g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]
        inside = (d2[0][:, None, None] + d2[1][None, :, None] + d2[2][None, None, :]) <= radius * radius
        stamp(out, np.where(inside, val, 0.0).astype(np.float32), lo - np.asarray(origin), how="max")
    return out


def heatmap_targets(objects, shape, *, sigma: float = 2.0, soft: float = 0.1, hard: float = 0.5,
                    classes=None, chunks=None):
    """Gaussian heatmap and hard/soft positive label map around labelled centres.

    Parameters
    ----------
    objects : pandas.DataFrame
        Object list with ``x, y, z`` (voxels); ``class_label`` is used with ``classes``.
    shape : tuple of 3 ints
        ``(z, y, x)`` size of the volume.
    sigma : float
        Gaussian standard deviation in voxels (about the particle radius / 2).
    soft, hard : float
        Thresholds on the heatmap: ``>= hard`` is a hard positive (1),
        ``[soft, hard)`` a soft positive (2, ignored in training), below
        ``soft`` unlabeled (0). ``0 < soft <= hard <= 1``.
    classes : int or iterable of int, optional
        Only place objects of these classes (default: all objects).
    chunks : int or tuple, optional
        Dask chunks of the output (default 128³-ish, as dask chooses).

    Returns
    -------
    heatmap : dask.array.Array
        float32 ``[z, y, x]``, in ``[0, 1]``.
    labels : dask.array.Array
        uint8 ``[z, y, x]``: 0 unlabeled, 1 hard positive, 2 soft positive.

    Examples
    --------
    >>> import pandas as pd
    >>> objs = pd.DataFrame({"class_label": [1], "x": [8.0], "y": [8.0], "z": [8.0]})
    >>> heat, lab = heatmap_targets(objs, (16, 16, 16), sigma=2, chunks=8)
    >>> float(heat[8, 8, 8].compute()), int(lab[8, 8, 8].compute()), int(lab[8, 8, 12].compute())
    (1.0, 1, 2)
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ShapeError(f"shape must have 3 values (z, y, x), not {shape}")
    if not sigma > 0:
        raise ValueProblem(f"sigma must be > 0, not {sigma}")
    if not 0 < soft <= hard <= 1:
        raise ValueProblem(f"thresholds must satisfy 0 < soft <= hard <= 1, not soft={soft}, hard={hard}")
    if not isinstance(objects, pd.DataFrame):
        objects = pd.DataFrame(objects)
    missing = [c for c in ("x", "y", "z") if c not in objects.columns]
    if missing:
        raise ValueProblem(f"objects lack column(s) {missing}")
    if classes is not None:
        if "class_label" not in objects.columns:
            raise ValueProblem("objects have no class_label column but classes were given")
        keep = np.atleast_1d(np.asarray(classes, dtype=np.int64))
        objects = objects[objects["class_label"].astype(np.int64).isin(keep)]
    zyx = objects[["z", "y", "x"]].to_numpy(dtype=np.float64).reshape(-1, 3)
    radius = _support(float(sigma), float(soft))
    c = np.rint(zyx)
    outside = int(np.sum(np.any((c < 0) | (c >= np.asarray(shape)), axis=1)))
    if outside:
        warnings.warn(f"heatmap targets: {outside} of {len(zyx)} objects lie outside the volume (z, y, x) = "
                      f"{shape}; only what their Gaussians reach inside is painted", stacklevel=2)

    chunks = da.core.normalize_chunks(chunks if chunks is not None else "auto", shape, dtype=np.float32)
    # only the objects whose truncated Gaussian reaches a block (the same boxes _heat_block paints)
    per_block = route(np.floor(zyx - radius).astype(np.int64), np.ceil(zyx + radius).astype(np.int64) + 1, chunks)
    none = np.zeros(0, np.int64)
    heat = blockwise(_heat_block, chunks, lambda idx, off, shp: (zyx[per_block.get(idx, none)], float(sigma), radius),
                     name="heatmap", token=(zyx, float(sigma), radius), dtype=np.float32)
    labels = da.where(heat >= hard, np.uint8(1), da.where(heat >= soft, np.uint8(2), np.uint8(0))).astype(np.uint8)
    log.info("heatmap targets: %d objects, sigma %.2f, support radius %d", len(zyx), sigma, radius)
    return heat, labels


def _smooth(h, sigma: float):
    """Gaussian filter of the spatial axes, block-wise with an exact halo (scipy, mode 'nearest')."""
    depth = int(math.ceil(4.0 * sigma))  # scipy's truncate=4 support
    sig = (0.0,) * (h.ndim - 3) + (float(sigma),) * 3
    dep = {ax: (depth if ax >= h.ndim - 3 else 0) for ax in range(h.ndim)}
    return h.astype(np.float32).map_overlap(
        lambda b: ndi.gaussian_filter(b, sig, mode="nearest", truncate=4.0).astype(np.float32),
        depth=dep, boundary="nearest", dtype=np.float32)


def decode_heatmap(heatmap, *, threshold: float = 0.5, top_k: int | None = None, min_distance: float = 5,
                   z_range=None, border=0, smooth: float = 0, classes=None, voxel_size: float | None = None):
    """Pick particles on a heatmap: 3D max-pool NMS, threshold, z-range, border, top-K.

    A voxel is picked when its score is at least ``threshold`` and the maximum
    of the ``(2 min_distance + 1)³`` box around it (ties: the smaller
    ``(z, y, x)`` index wins). The NMS runs block by block with a halo of
    ``2 min_distance`` (see :func:`tomochunk.ops.pick.pick`, mode ``"nms"``),
    so a chunked heatmap gives exactly the picks of one pass over the whole
    array. The cut-offs are applied before the global top-K.

    A network's probability often saturates at 1.0 over a whole particle; on
    such a plateau the NMS keeps its first voxel (a corner), not its centre.
    ``smooth`` (a Gaussian of that sigma, computed block-wise with an exact
    halo, so still equal to ``scipy.ndimage.gaussian_filter(h, smooth,
    mode="nearest")`` on the whole array) breaks the plateaus and centres the
    picks; the scores are then the smoothed values.

    Parameters
    ----------
    heatmap : dask.array.Array, xarray.DataArray or numpy.ndarray
        ``[z, y, x]`` score of one class, or ``[c, z, y, x]`` (class 0 skipped).
    threshold : float
        Smallest score of a pick.
    top_k : int, optional
        Keep the ``top_k`` best picks (per class) over the whole volume.
    min_distance : float
        NMS half-window in voxels (Chebyshev distance between picks > this).
    z_range : (float, float), optional
        Keep picks with ``z_min <= z <= z_max`` (either may be ``None``).
    border : float or tuple of 3 floats
        Drop picks closer than this to the volume faces, per ``(z, y, x)`` axis.
    smooth : float
        Gaussian sigma (voxels) applied before the NMS; 0 (default): none.
    classes : iterable of int, optional
        Channels of a ``[c, z, y, x]`` map (default all but 0).
    voxel_size : float, optional
        Å per voxel stored with the list (default: from the xarray input).

    Returns
    -------
    pandas.DataFrame
        ``class_label, x, y, z, score, obj_id`` sorted by decreasing score.

    Examples
    --------
    >>> h = np.zeros((16, 16, 16), np.float32); h[4, 5, 6] = 0.75; h[12, 12, 12] = 0.5
    >>> decode_heatmap(h, threshold=0.5, z_range=(0, 10))[["x", "y", "z", "score"]].values.tolist()
    [[6.0, 5.0, 4.0, 0.75]]
    """
    h, vs = as_input(heatmap, "heatmap")
    vs = voxel_size if voxel_size is not None else vs
    if h.ndim not in (3, 4):
        raise ShapeError(f"heatmap must be [z, y, x] or [c, z, y, x], got {h.ndim} dimensions")
    if top_k is not None and int(top_k) < 0:
        raise ValueProblem(f"top_k must be >= 0, not {top_k}")
    if not min_distance >= 0:
        raise ValueProblem(f"min_distance must be >= 0, not {min_distance}")
    b = np.broadcast_to(np.asarray(border, dtype=float), (3,))
    if np.any(b < 0):
        raise ValueProblem(f"border must be >= 0, not {border}")
    if z_range is not None:
        if len(z_range) != 2:
            raise ValueProblem(f"z_range must be (z_min, z_max), not {z_range}")
        zlo = -np.inf if z_range[0] is None else float(z_range[0])
        zhi = np.inf if z_range[1] is None else float(z_range[1])
        if zlo > zhi:
            raise ValueProblem(f"z_range {z_range} is empty (z_min > z_max)")
    if smooth < 0:
        raise ValueProblem(f"smooth must be >= 0, not {smooth}")
    if smooth > 0:
        h = _smooth(as_blocked(h)[0], smooth)
    if one_block(h):  # read (and smooth) once, then numpy only
        h = in_memory(h)
    frames = [picks_frame(c, peaks(m, threshold=threshold, spacing=min_distance, cap=1, mode="nms"))
              for c, m in class_maps(h, classes, "heatmap")]
    df = pd.concat(frames, ignore_index=True) if frames else picks_frame(1, np.zeros((0, 4)))
    shape = np.asarray(h.shape[-3:], dtype=float)
    if len(df):
        zyx = df[["z", "y", "x"]].to_numpy(dtype=float)
        ok = np.all((zyx >= b) & (zyx <= shape - 1 - b), axis=1)
        if z_range is not None:
            ok &= (zyx[:, 0] >= zlo) & (zyx[:, 0] <= zhi)
        df = df[ok]
        df = df.sort_values(["score", "z", "y", "x"], ascending=[False, True, True, True], kind="stable")
        if top_k is not None:
            df = df.groupby("class_label", sort=False).head(int(top_k))
    df = df.reset_index(drop=True)
    df["obj_id"] = np.arange(1, len(df) + 1)
    out = object_frame(df, vs)
    log.info("decode_heatmap: %d picks", len(out))
    return out
