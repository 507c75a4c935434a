"""DeepFinder's patch tiling (``tiling="patches"`` of :func:`tomochunk.nn.segment.segment`).

Consecutive patches are grouped into compute blocks; each block runs its patches through
the network in batches and returns the weighted sum of its cores, already divided by the
(separable, known in advance) sum of weights. Neighbouring blocks share only the thin
slabs where cores overlap; :func:`overlap_add` sums those.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import dask
import dask.array as da
import numpy as np

from ._model import run


@dataclass
class _Axis:
    n: int                 # voxels of the volume along this axis
    length: int            # padded length
    starts: list           # patch starts in padded coordinates
    groups: list           # lists of patch indices, one per compute block
    norm: np.ndarray       # 1 / sum of core weights, per padded voxel


def _weights(core, blend):
    """Per-axis weights of a core: ones (``"crop"``) or a Gaussian of sigma core/4.

    Examples
    --------
    >>> _weights(4, "crop").tolist()
    [1.0, 1.0, 1.0, 1.0]
    >>> bool(_weights(5, "gaussian")[2] == 1.0)
    True
    """
    if blend == "crop":
        return np.ones(core, np.float64)
    sigma = core / 4.0
    d = np.arange(core) - (core - 1) / 2.0
    return np.exp(-0.5 * (d / sigma) ** 2)


def _axis_plan(n, patch, crop, core_overlap, block_patches, w):
    """Patch starts along one axis (DeepFinder's), grouped ``block_patches`` to a block.

    Examples
    --------
    >>> ax = _axis_plan(40, 16, 4, 4, 2, _weights(8, "crop"))
    >>> ax.length, ax.starts, ax.groups
    (48, [0, 4, 8, 12, 16, 20, 24, 28, 32], [[0, 1], [2, 3], [4, 5], [6, 7, 8]])
    """
    length = max(n + 2 * crop, patch)
    step = patch - 2 * crop - core_overlap
    starts = list(range(0, length - patch, step))
    if not starts or starts[-1] < length - patch:
        starts.append(length - patch)
    k = max(1, int(block_patches))
    groups = [list(range(i, min(i + k, len(starts)))) for i in range(0, len(starts), k)]
    if k > 1 and len(groups) > 1 and len(groups[-1]) == 1:  # the flush last patch may overlap a lot:
        last = groups.pop()                      # keep it with its neighbour, so only neighbours share slabs
        groups[-1] = groups[-1] + last
    core = patch - 2 * crop
    total = np.zeros(length, np.float64)
    for s in starts:
        total[s + crop:s + crop + core] += w
    with np.errstate(divide="ignore"):
        norm = np.where(total > 0, 1.0 / total, 0.0)
    return _Axis(n, length, starts, groups, norm)


def _region(ax, g, patch, crop):
    """Padded-coordinate region [lo, hi) of the cores of group g, and its input range."""
    idx = ax.groups[g]
    lo, hi = ax.starts[idx[0]] + crop, ax.starts[idx[-1]] + patch - crop
    return lo, hi, lo - crop, hi + crop


def _plan_axes(shape, patch, crop, core_overlap, k, w, min_blocks):
    """Axis plans with ``k`` patches per block and axis, fewer along the longest groups until
    there are at least ``min_blocks`` blocks (one per worker), so no worker idles on a small volume.

    Examples
    --------
    >>> axes = _plan_axes((24, 40, 36), 16, 4, 4, 8, _weights(8, "crop"), 2)
    >>> [len(ax.groups) for ax in axes]
    [1, 2, 1]
    """
    ks = [k] * len(shape)
    while True:
        axes = [_axis_plan(n, patch, crop, core_overlap, kk, w) for n, kk in zip(shape, ks)]
        if math.prod(len(ax.groups) for ax in axes) >= min_blocks:
            return axes
        sizes = [max(len(g) for g in ax.groups) for ax in axes]
        a = int(np.argmax(sizes))
        if sizes[a] <= 1:
            return axes
        ks[a] = min(ks[a], sizes[a]) - 1


def _auto_block_patches(patch, step):
    """Patches per axis of a compute block: blocks of about 288 voxels a side.

    Examples
    --------
    >>> _auto_block_patches(160, 106)
    2
    """
    return max(1, (288 - patch) // step + 1)


def predict_block(block, model, patch, crop, local_starts, norms, w, n_classes, batch_size):
    """Weighted sum of the cores of every patch in ``block``, divided by the global weight sums."""
    block = np.asarray(block, dtype=np.float32)
    core = patch - 2 * crop
    region = tuple(b - 2 * crop for b in block.shape)
    out = np.zeros((n_classes,) + region, np.float32)
    w3 = None
    if np.any(w != 1.0):
        w3 = (w[:, None, None] * w[None, :, None] * w[None, None, :]).astype(np.float32)
    coords = list(product(*local_starts))
    for b0 in range(0, len(coords), batch_size):
        batch = coords[b0:b0 + batch_size]
        x = np.stack([block[z:z + patch, y:y + patch, xx:xx + patch] for z, y, xx in batch])[..., None]
        pred = run(model, x)
        for (z, y, xx), p in zip(batch, pred):
            c = p[crop:crop + core, crop:crop + core, crop:crop + core, :]
            c = np.moveaxis(c, -1, 0)
            if w3 is not None:
                c = c * w3
            out[:, z:z + core, y:y + core, xx:xx + core] += c
    nz, ny, nx = (np.asarray(v, np.float32) for v in norms)
    out *= nz[:, None, None]
    out *= ny[None, :, None]
    out *= nx[None, None, :]
    return out


def patch_scores(data, shape, handle, patch, crop, core_overlap, blend, k, n_workers, n_classes,
                 batch_size, precision, annotate):
    """DeepFinder's patch tiling: lazy ``[c, z, y, x]`` scores.

    ``handle`` is the :class:`~tomochunk.nn._model.ModelHandle` the tasks load the network
    from; ``annotate()`` is the context (GPU resources) for the network tasks only.
    """
    w = _weights(patch - 2 * crop, blend)
    axes = _plan_axes(shape, patch, crop, core_overlap, k, w, n_workers)

    # zero padding after normalisation, as DeepFinder does
    pad = [(crop, ax.length - ax.n - crop) for ax in axes]
    padded = da.pad(data, pad, mode="constant", constant_values=0)

    # one input block per group of patches: cores plus `crop` on each side
    ranges = [[_region(ax, g, patch, crop) for g in range(len(ax.groups))] for ax in axes]
    pieces = [[[padded[rz[2]:rz[3], ry[2]:ry[3], rx[2]:rx[3]] for rx in ranges[2]] for ry in ranges[1]]
              for rz in ranges[0]]
    ext = da.block(pieces)
    ext = ext.rechunk(tuple(tuple(r[3] - r[2] for r in rr) for rr in ranges))

    def run_block(block, block_id=None, blob=None):
        gs = block_id[1:]
        rs = [ranges[a][gs[a]] for a in range(3)]
        starts = [[axes[a].starts[i] - rs[a][2] for i in axes[a].groups[gs[a]]] for a in range(3)]
        norms = [axes[a].norm[rs[a][0]:rs[a][1]] for a in range(3)]
        return predict_block(block[0], handle.load(precision, blob), patch, crop, starts, norms, w, n_classes,
                             batch_size)

    out_chunks = ((n_classes,),) + tuple(tuple(r[1] - r[0] for r in rr) for rr in ranges)
    name = "segment-" + dask.base.tokenize(data, handle.token, patch, crop, blend, core_overlap,
                                           [ax.groups for ax in axes], batch_size, precision)
    ext = ext[None]
    with annotate():
        scores = da.map_blocks(run_block, ext, chunks=out_chunks, dtype=np.float32, name=name,
                               meta=np.empty((0, 0, 0, 0), np.float32), **handle.kwargs())

    # add the thin slabs where neighbouring blocks' cores overlap; crop the padding
    for a, (ax, rr) in enumerate(zip(axes, ranges)):
        scores = overlap_add(scores, a + 1, rr, crop, crop + ax.n)
    return scores


def overlap_add(arr, axis, regions, lo_keep, hi_keep):
    """Collapse the per-block layout along ``axis`` to volume coordinates [lo_keep, hi_keep).

    ``regions[g] = (lo, hi, ...)`` is block g's padded-coordinate extent; blocks sit one
    after another in ``arr``. Intervals covered by two blocks are summed.

    Examples
    --------
    >>> a = da.from_array(np.ones(6), chunks=3)  # two blocks: [0, 3) and [2, 5)
    >>> overlap_add(a, 0, [(0, 3), (2, 5)], 0, 5).compute().tolist()
    [1.0, 1.0, 2.0, 1.0, 1.0]
    """
    offsets = np.cumsum([0] + [r[1] - r[0] for r in regions])
    cuts = sorted({lo_keep, hi_keep} | {v for r in regions for v in r[:2] if lo_keep < v < hi_keep})
    parts = []
    for p, q in zip(cuts[:-1], cuts[1:]):
        acc = None
        for g, r in enumerate(regions):
            if r[0] <= p and q <= r[1]:
                idx = [slice(None)] * arr.ndim
                idx[axis] = slice(offsets[g] + p - r[0], offsets[g] + q - r[0])
                piece = arr[tuple(idx)]
                acc = piece if acc is None else acc + piece
        parts.append(acc)
    return da.concatenate(parts, axis=axis) if len(parts) > 1 else parts[0]
