"""Chunk arithmetic of the pyramid writer: downsampling, one-pass statistics, ``O_DIRECT`` writes.

Private to :mod:`tomochunk.io.omezarr`.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ._source import ALIGN


def _downsample(block, factors, label):
    """Mean over ``factors`` blocks (edge-padded), or striding for labels."""
    if all(f == 1 for f in factors):
        return block
    if label:
        return block[tuple(slice(None, None, f) for f in factors)]
    pad = [(0, (-n) % f) for n, f in zip(block.shape, factors)]
    if any(p[1] for p in pad):
        block = np.pad(block, pad, mode="edge")
    acc = block.astype(np.float32 if block.dtype.itemsize <= 4 else np.float64, copy=False)
    n = 1
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        idx = [slice(None)] * acc.ndim
        parts = []
        for k in range(f):
            idx[axis] = slice(k, None, f)
            parts.append(acc[tuple(idx)])
        acc = sum(parts[1:], parts[0].copy()) if f > 2 else parts[0] + parts[1]
        n *= f
    acc *= 1.0 / n
    return acc.astype(block.dtype, copy=False) if block.dtype.kind == "f" else np.rint(acc).astype(block.dtype)


_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux


def _write_direct(path, data) -> bool:
    """Write a raw chunk with ``O_DIRECT`` (False where that cannot be done: unaligned data, a
    file system without it). The page cache is bypassed: no kernel copy of the chunk (about
    a third of a raw conversion's CPU time) and no dirty pages left to write back later."""
    if not _DIRECT or data.nbytes % ALIGN or data.ctypes.data % ALIGN:
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _DIRECT, 0o644)
    except OSError:  # e.g. EINVAL on tmpfs
        return False
    view, done = memoryview(data.reshape(-1).view(np.uint8)), 0
    try:
        while done < len(view):
            done += os.write(fd, view[done:])
    except OSError:
        pass
    finally:
        os.close(fd)
    if done < len(view):
        os.unlink(path)
        return False
    return True


def stats_and_downsample(block, down, factors, label, slab_bytes=4 << 20):
    """Block statistics and (optionally) its downsample, one cache-sized slab at a time:
    the block crosses main memory once instead of once per reduction (~30% faster)."""
    f0 = factors[0]
    plane = max(1, block[:1].nbytes)
    step = max(f0, slab_bytes // plane // f0 * f0)
    if block.ndim == 0 or block.shape[0] <= step:
        return block_stats(block), (_downsample(block, factors, label) if down else None)
    n, s, ss, mn, mx, nf = 0, 0.0, 0.0, math.inf, -math.inf, 0
    pieces = []
    for z in range(0, block.shape[0], step):
        sl = block[z:z + step]
        bn, bs, bss, bmn, bmx, bnf = block_stats(sl)
        n, s, ss, mn, mx, nf = n + bn, s + bs, ss + bss, min(mn, bmn), max(mx, bmx), nf + bnf
        if down:
            pieces.append(_downsample(sl, factors, label))
    return (n, s, ss, mn, mx, nf), (np.concatenate(pieces) if down else None)


def block_stats(block):
    """(n, sum, sum of squares, min, max, non-finite count) of a block.

    Sums run along rows in the block's own precision (numpy sums pairwise
    there, so float32 stays accurate) and only the row sums are
    added in float64: no float64 copy of the block, half the time of a
    float64 reduction.
    """
    if not block.ndim:
        rows = block.reshape(1, 1)
    elif block.flags.c_contiguous and block.size % 8192 == 0:
        rows = block.reshape(-1, 8192)  # long rows: numpy's reductions run ~2x faster than on short x rows
    else:
        rows = block.reshape(-1, block.shape[-1])
    nf, total = 0, None
    if block.dtype.kind == "f":
        total = float(rows.sum(axis=1).sum(dtype=np.float64))
        if not math.isfinite(total):
            finite = np.isfinite(block)
            nf = int(block.size - np.count_nonzero(finite))
            rows, total = block[finite].reshape(1, -1), None
    if not rows.size:
        return (0, 0.0, 0.0, math.inf, -math.inf, nf)
    f = rows.astype(np.float32, copy=False) if rows.dtype.itemsize <= 4 else rows.astype(np.float64)
    if total is None:
        total = float(f.sum(axis=1).sum(dtype=np.float64))
    sumsq = float(np.einsum("ij,ij->i", f, f).sum(dtype=np.float64))
    return (rows.size, total, sumsq, float(rows.min()), float(rows.max()), nf)
