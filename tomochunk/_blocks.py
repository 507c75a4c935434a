"""Block geometry over a dask ``chunks`` tuple: the one place for chunk offsets and slices.

Every op and writer that walks the blocks of an array gets the offsets and
slices from here, so a block's position is computed one way everywhere.
"""

from __future__ import annotations

import itertools

import numpy as np


def chunk_bounds(chunks) -> list:
    """Per axis, the ``len(c) + 1`` block boundaries ``[0, c0, c0+c1, ...]`` as int64 arrays.

    Examples
    --------
    >>> [b.tolist() for b in chunk_bounds(((2, 1), (4,)))]
    [[0, 2, 3], [0, 4]]
    """
    return [np.concatenate([[0], np.cumsum(c, dtype=np.int64)]).astype(np.int64) for c in chunks]


def chunk_starts(chunks) -> list:
    """Per axis, the start offset of every block, as int64 arrays.

    Examples
    --------
    >>> [s.tolist() for s in chunk_starts(((2, 1), (4,)))]
    [[0, 2], [0]]
    """
    return [b[:-1] for b in chunk_bounds(chunks)]


def block_offset(chunks, block_index) -> tuple:
    """The voxel offset of block ``block_index`` (a tuple of block numbers).

    Examples
    --------
    >>> block_offset(((2, 1), (4, 4)), (1, 1))
    (2, 4)
    """
    return tuple(int(s[i]) for s, i in zip(chunk_starts(chunks), block_index))


def block_slices(chunks):
    """Yield ``(block_index, tuple_of_slices)`` over a dask ``chunks`` tuple, in C order.

    Examples
    --------
    >>> [s for _, s in block_slices(((2, 1),))]
    [(slice(0, 2, None),), (slice(2, 3, None),)]
    """
    bounds = chunk_bounds(chunks)
    for idx in itertools.product(*[range(len(c)) for c in chunks]):
        yield idx, tuple(slice(int(b[i]), int(b[i + 1])) for b, i in zip(bounds, idx))
