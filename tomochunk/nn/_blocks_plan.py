"""The block tiling (``tiling="blocks"`` of :func:`tomochunk.nn.segment.segment`).

One network call per Dask block plus a halo of ``crop`` voxels (rounded up to a multiple
of 4) towards each neighbour. Block sides and halos are multiples of 4 and the first block
is ``crop % 4`` voxels shorter, with that many zeros in front, so every window pools in
one phase (see :func:`predict_window`).
"""

from __future__ import annotations

import math
from itertools import product

import dask
import dask.array as da
import numpy as np

from .._log import get_logger
from ..errors import ValueProblem
from ._memory import memory_budget
from ._model import run
from ._split import split_of

log = get_logger(__name__)

POOL = 4  # the U-Net pools twice by 2: window sides must be multiples of 4


def _up4(v):
    """``v`` rounded up to a multiple of 4 (``POOL``).

    Examples
    --------
    >>> _up4(25), _up4(28)
    (28, 28)
    """
    return -(-int(v) // POOL) * POOL


def _halo(crop):
    """Context voxels per inner block side: ``crop`` rounded up to a multiple of 4."""
    return _up4(crop)


def _even_chunks(n, c):
    return tuple(min(c, n - i) for i in range(0, n, c)) or (n,)


def window_voxels(chunks, crop):
    """Voxels the network runs on for ``tiling="blocks"`` with these block chunks: every block
    plus its halos and lead, padded to multiples of 4 (over the volume's voxels: the tiling overhead).

    Examples
    --------
    >>> window_voxels(((99, 101), (256,), (256,)), crop=25)
    17576000
    """
    halo, lead = _halo(crop), crop % POOL
    sides = []
    for c in chunks:
        w = [n + (halo if i else lead) + halo * (i < len(c) - 1) for i, n in enumerate(c)]
        sides.append([_up4(v) for v in w])
    return int(sum(math.prod(t) for t in product(*sides)))


def block_chunks(shape, crop, block_shape, bytes_per_voxel, workers):
    """Block sides (multiples of 4): ``block_shape`` rounded up, or the plan whose windows (block
    plus a halo per inner side) cover the fewest voxels, among those whose largest window fits the
    memory budget and that give every worker a block.

    The network's cost is the voxels of all windows, so the plan is searched for, not halved
    along the longest side: on 176x192x192 (13 classes, float32, 12 GB) halving gave 2x2 blocks
    across y and x (1.76x the volume), the search 2 blocks across x (1.37x).

    Examples
    --------
    >>> block_chunks((64, 96, 80), 4, None, 1024.0, {"a": {"memory_limit": 4e9}, "b": {"memory_limit": 4e9}})
    ((64,), (48, 48), (80,))
    >>> block_chunks((176, 192, 192), 25, None, 1440.0, {"w": {"memory_limit": 12e9}})
    ((176,), (192,), (99, 93))
    """
    if block_shape is not None:
        bs = (int(block_shape),) * 3 if np.isscalar(block_shape) else tuple(int(b) for b in block_shape)
        if len(bs) != 3 or min(bs) < 1:
            raise ValueProblem(f"block_shape must be one or 3 positive integers, got {block_shape!r}")
        return tuple(_axis_blocks(n, _up4(b), crop) for n, b in zip(shape, bs))
    max_vox = memory_budget(workers) / bytes_per_voxel
    need = max(1, len(workers))
    # per axis, the distinct splits: (sum of window sides, largest window side, blocks, chunks);
    # window voxels and the largest window are products of these over the axes
    options = [_axis_options(n, crop) for n in shape]
    best = None
    for combo in product(*options):
        total = math.prod(o[0] for o in combo)
        largest = math.prod(o[1] for o in combo)
        blocks = math.prod(o[2] for o in combo)
        fits = largest <= max_vox and blocks >= need
        # fitting plans first, then the fewest window voxels, then the fewest blocks
        key = (not fits, total if fits else largest, blocks)
        if best is None or key < best[0]:
            best = (key, combo)
    (unfit, _, _), combo = best
    if unfit:
        log.warning("segment: windows of %s voxels exceed the memory budget (%.1f GB)",
                    [o[1] for o in combo], max_vox * bytes_per_voxel / 1e9)
    return tuple(o[3] for o in combo)


def largest_window(chunks, crop):
    """Voxels of the largest window (block, halos, lead and padding to 4) of these block chunks.

    Examples
    --------
    >>> largest_window(((176,), (192,), (99, 93)), 25)  # 180 x 196 x 128
    4515840
    """
    halo, lead = _halo(crop), crop % POOL
    return math.prod(max(_up4(n + (halo if i else lead) + halo * (i < len(c) - 1)) for i, n in enumerate(c))
                     for c in chunks)


def _axis_options(n, crop, most=64):
    """The distinct block splits of an axis of ``n`` (at most ``most`` blocks, none thinner
    than the halo): ``(sum of window sides, largest window side, blocks, chunks)`` for each.

    Examples
    --------
    >>> [o[:3] for o in _axis_options(100, 25)]
    [(104, 100, 1), (160, 79, 2), (216, 92, 3), (216, 84, 3)]
    """
    halo, lead = _halo(crop), crop % POOL
    out, seen = [], set()
    for k in range(1, most + 1):
        side = _up4(math.ceil((n + lead) / k))
        if k > 1 and side < max(halo, POOL):
            break
        c = _axis_blocks(n, side, crop)
        if c in seen:
            continue
        seen.add(c)
        # the cost counts the lead and the padding to 4; the memory fit, as before, the block and
        # its halos only (a few voxels less, well inside the budget's margin)
        halos = [halo * ((i > 0) + (i < len(c) - 1)) for i in range(len(c))]
        w = [_up4(m + h + (0 if i else lead)) for i, (m, h) in enumerate(zip(c, halos))]
        out.append((sum(w), max(m + h for m, h in zip(c, halos)), len(c), c))
    return out


def _axis_blocks(n, side, crop):
    """Blocks of ``side`` along an axis of ``n``, the first ``crop % 4`` shorter (see
    :func:`predict_window`); a last one thinner than the halo joins its neighbour.

    Examples
    --------
    >>> _axis_blocks(100, 32, 25)
    (31, 32, 37)
    """
    first = min(n, side - crop % POOL)
    c = [first] + list(_even_chunks(n - first, side) if n > first else ())
    if len(c) > 1 and c[-1] < _halo(crop):
        last = c.pop()
        c[-1] += last
    return tuple(c)


def block_scores(data, chunks, handle, crop, n_classes, precision, annotate, slab_voxels=0):
    """Lazy ``[c, z, y, x]`` scores, one network call per block of ``chunks`` plus its halo
    (``handle``: the network's :class:`~tomochunk.nn._model.ModelHandle`; ``annotate()``:
    the context for the network tasks; ``slab_voxels``: the slabs of a DeepFinder U-Net's
    full-resolution levels, see :mod:`tomochunk.nn._split`; 0: whole calls)."""
    data = data.rechunk(chunks)
    halo = _halo(crop)
    depth = {a: (halo if len(c) > 1 else 0) for a, c in enumerate(data.chunks)}
    if any(min(c) < depth[a] for a, c in enumerate(data.chunks)):  # block_shape below the halo
        raise ValueProblem(f"blocks {tuple(min(c) for c in data.chunks)} are thinner than the halo "
                           f"({halo} voxels): use a larger block_shape")
    ext = da.overlap.overlap(data, depth=depth, boundary="none")
    nblocks = data.numblocks

    def run_block(block, block_id=None, blob=None):
        ids = block_id[1:]  # after the new class axis
        inner = [(ids[a] > 0 and depth[a] > 0, ids[a] < nblocks[a] - 1 and depth[a] > 0) for a in range(3)]
        return predict_window(block, handle.load(precision, blob), depth, inner, crop % POOL, slab_voxels)

    name = f"segment-blocks-{dask.base.tokenize(data, handle.token, crop, precision, slab_voxels)}"
    with annotate():
        return da.map_blocks(run_block, ext, new_axis=0, chunks=((n_classes,),) + data.chunks,
                             dtype=np.float32, name=name, meta=np.empty((0, 0, 0, 0), np.float32),
                             **handle.kwargs())


def predict_window(block, model, depth, inner, lead, slab_voxels=0):
    """Scores of a block's core from one network call on the block and its halo.

    ``inner[a] = (low, high)``: which sides of axis ``a`` carry a halo of ``depth[a]``
    voxels. Halos and inner blocks are multiples of 4 and the first block, ``lead = crop % 4``
    voxels shorter, gets ``lead`` zeros in front: every window starts at a volume coordinate
    of ``-crop`` modulo 4, where DeepFinder's first patch starts, so the U-Net pools in one
    phase everywhere (no seams between blocks) and in the phase of DeepFinder's first patch.
    Far faces are zero-padded to a multiple of 4. With ``slab_voxels``, a network that
    :func:`~tomochunk.nn._split.split_of` knows runs its full-resolution levels in z slabs of
    about that many voxels (the same scores, a third of the memory).
    """
    x = np.asarray(block, dtype=np.float32)
    front = [0 if lo else lead for lo, _ in inner]
    pad = [(f, (-(f + n)) % POOL) for f, n in zip(front, x.shape)]
    if any(p != (0, 0) for p in pad):
        x = np.pad(x, pad)
    core = tuple(slice(f + (depth[a] if lo else 0), f + n - (depth[a] if hi else 0))
                 for a, ((lo, hi), n, f) in enumerate(zip(inner, block.shape, front)))
    split = split_of(model) if slab_voxels else None
    if split is not None:
        return split.predict_core(x, core, slab_voxels)
    y = run(model, x[None, ..., None])[0]
    return _classes_first(y[core])


def _classes_first(y):
    """``[z, y, x, c]`` -> contiguous ``[c, z, y, x]``, one z slice at a time: each slice's
    transpose stays in cache (0.08 s against 0.21 s for one ``moveaxis`` copy of a
    176x192x99x13 float32 core).

    Examples
    --------
    >>> y = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    >>> bool((_classes_first(y) == np.moveaxis(y, -1, 0)).all())
    True
    """
    out = np.empty((y.shape[-1],) + y.shape[:-1], y.dtype)
    for z in range(y.shape[0]):
        out[:, z] = np.moveaxis(y[z], -1, 0)
    return out
