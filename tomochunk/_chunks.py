"""Block iteration over a dask ``chunks`` tuple, shared by the I/O writers and the ops."""

from __future__ import annotations

import itertools

import numpy as np


def block_slices(chunks):
    """Yield ``(block_index, tuple_of_slices)`` over a dask ``chunks`` tuple.

    Examples
    --------
    >>> [s for _, s in block_slices(((2, 1),))]
    [(slice(0, 2, None),), (slice(2, 3, None),)]
    """
    starts = [np.concatenate([[0], np.cumsum(c)]) for c in chunks]
    for idx in itertools.product(*[range(len(c)) for c in chunks]):
        yield idx, tuple(slice(int(s[i]), int(s[i + 1])) for s, i in zip(starts, idx))
