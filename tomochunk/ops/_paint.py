"""The one way to paint objects into maps block by block (targets, heatmaps, phantoms, movies).

A designated private module: :mod:`tomochunk.ops.targets`, :mod:`tomochunk.ops.heatmap`
and :mod:`tomochunk.phantom` build their maps with it, and any other painter (TIRF
event targets) can. Three pieces:

* :func:`route` decides, at graph construction, which blocks each object's box
  touches, so every task carries only the objects of its block;
* :func:`blockwise` makes a dask array with one independent task per block (plus the
  block of an optional initial map), so computing or writing one chunk runs one task
  and a map larger than memory streams to Zarr;
* :func:`stamp` puts one object's template into a block, clipped at the block's
  faces: ``"set"`` (the template's True voxels get a value: later objects overwrite
  earlier ones), ``"max"`` or ``"add"``.
"""

from __future__ import annotations

import itertools

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from .._blocks import chunk_bounds

__all__ = ["route", "blockwise", "stamp"]


def route(lo, hi, chunks) -> dict:
    """``{block_index: indices of the objects whose box [lo, hi) touches the block}``, in object order.

    Boxes are in global voxel indices (``(n, ndim)`` integer arrays, ``hi`` exclusive);
    parts outside the array are ignored, and objects entirely outside are in no block.

    Examples
    --------
    >>> r = route(np.array([[0, 0], [3, 3]]), np.array([[2, 2], [5, 5]]), ((2, 2), (2, 2)))
    >>> {k: v.tolist() for k, v in r.items()}
    {(0, 0): [0], (1, 1): [1]}
    """
    lo = np.asarray(lo, np.int64).reshape(-1, len(chunks))
    hi = np.asarray(hi, np.int64).reshape(-1, len(chunks))
    bounds = chunk_bounds(chunks)
    shape = np.array([b[-1] for b in bounds])
    a = np.maximum(lo, 0)
    b = np.minimum(hi, shape) - 1  # last voxel inside
    inside = np.flatnonzero(np.all(b >= a, axis=1))
    first = np.stack([np.searchsorted(bd, a[inside, ax], side="right") - 1 for ax, bd in enumerate(bounds)], 1)
    last = np.stack([np.searchsorted(bd, b[inside, ax], side="right") - 1 for ax, bd in enumerate(bounds)], 1)
    out: dict[tuple, list] = {}
    for k, f, la in zip(inside.tolist(), first.tolist(), last.tolist()):
        for idx in itertools.product(*[range(i, j + 1) for i, j in zip(f, la)]):
            out.setdefault(idx, []).append(k)
    return {idx: np.asarray(ks, np.int64) for idx, ks in out.items()}


class _Opaque:
    """Wraps task arguments so that dask passes them through untouched (no key lookups)."""

    def __init__(self, value):
        self.value = value


def _call(render, args, offset, shape, *init):
    return render(args.value, offset, shape, *init)


def blockwise(render, chunks, block_args, *, name, token, dtype, initial=None):
    """A dask array with one independent ``render(args, offset, shape[, initial_block])`` task per block.

    Parameters
    ----------
    render : callable
        Returns the numpy block of ``shape`` at global ``offset`` (tuples of ints).
    chunks : tuple of tuples
        Normalised dask chunks of the result.
    block_args : callable
        ``block_args(block_index, offset, shape)``, called here at graph construction: what
        the block's task needs (the objects that touch it), passed to ``render`` untouched.
    name : str
        Prefix of the task names.
    token : object
        Everything the result depends on (hashed with the chunks into the task names).
    dtype : dtype
    initial : dask.array.Array, optional
        A map with the same chunks whose block is passed to ``render`` as its last argument.

    Examples
    --------
    >>> a = blockwise(lambda n, off, shp: np.full(shp, n), ((2, 2),), lambda i, o, s: i[0],
    ...               name="demo", token=0, dtype=int)
    >>> a.compute().tolist()
    [0, 0, 1, 1]
    """
    out = f"{name}-{tokenize(token, chunks, None if initial is None else initial.name)}"
    bounds = chunk_bounds(chunks)
    dsk = {}
    for idx in itertools.product(*[range(len(c)) for c in chunks]):
        off = tuple(int(b[i]) for b, i in zip(bounds, idx))
        shp = tuple(int(c[i]) for c, i in zip(chunks, idx))
        extra = () if initial is None else ((initial.name,) + idx,)
        dsk[(out,) + idx] = (_call, render, _Opaque(block_args(idx, off, shp)), off, shp) + extra
    deps = [] if initial is None else [initial]
    graph = HighLevelGraph.from_collections(out, dsk, dependencies=deps)
    return da.Array(graph, out, chunks, meta=np.empty((0,) * len(chunks), np.dtype(dtype)))


def stamp(out, piece, corner, *, how="set", value=None) -> bool:
    """Put ``piece`` into ``out`` with its first voxel at ``corner`` (block indices), clipped to ``out``.

    ``how="set"``: ``out = value`` where ``piece`` is True; ``"max"``: ``out = max(out, piece)``;
    ``"add"``: ``out += piece``. Returns False when nothing of ``piece`` falls inside.

    Examples
    --------
    >>> out = np.zeros((4, 4), int)
    >>> stamp(out, np.ones((2, 2), bool), (-1, 3), value=7), out[0].tolist()
    (True, [0, 0, 0, 7])
    """
    corner = np.asarray(corner, np.int64)
    lo = np.maximum(corner, 0)
    hi = np.minimum(corner + np.asarray(piece.shape), out.shape)
    if np.any(hi <= lo):
        return False
    dst = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    src = tuple(slice(int(a - c), int(b - c)) for a, b, c in zip(lo, hi, corner))
    if how == "set":
        out[dst][piece[src]] = value
    elif how == "max":
        np.maximum(out[dst], piece[src], out=out[dst])
    elif how == "add":
        out[dst] += piece[src]
    else:
        raise ValueError(f"how must be 'set', 'max' or 'add', not {how!r}")
    return True
