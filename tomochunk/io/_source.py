"""Picklable, lazily-read array sources behind ``dask.array.from_array``.

A source holds a path and the layout of the data, never an open handle or a
memory map, so a Dask graph that carries it pickles to a few hundred bytes and
each worker opens the file itself.
"""

from __future__ import annotations

import mmap
import os
import warnings

import numpy as np

from ..errors import FormatError


class TomochunkWarning(UserWarning):
    """Warnings about suspicious but readable input (zero MRC machine stamp, NaN voxels, ...)."""


def warn(message: str, path=None) -> None:
    """Warn with a :class:`TomochunkWarning` whose message starts with the file name.

    Examples
    --------
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     warn("zero machine stamp", "t.mrc")
    >>> str(w[0].message)
    't.mrc: zero machine stamp'
    """
    where = f"{path}: " if path is not None else ""
    warnings.warn(where + message, TomochunkWarning, stacklevel=3)


class Source:
    """Base class: ``shape``, ``dtype``, ``ndim`` and ``__getitem__`` over basic slices."""

    shape: tuple
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key):
        key = _normalize_key(key, self.shape)
        return self.read(key)

    def read(self, key: tuple[slice, ...]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def _normalize_key(key, shape):
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1:]
    key = key + (slice(None),) * (len(shape) - len(key))
    out = []
    for k, n in zip(key, shape):
        if isinstance(k, (int, np.integer)):
            k = int(k) % n if n else int(k)
            out.append(slice(k, k + 1, 1))  # integer indices are squeezed by the caller below
        else:
            out.append(slice(*k.indices(n)))
    return tuple(out)


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux only

#: alignment of blocks read here, so that writers can hand them to O_DIRECT unchanged
ALIGN = 4096


def aligned_empty(shape, dtype, align=ALIGN, fill=None) -> np.ndarray:
    """``np.empty`` (``np.full`` with ``fill``) whose data starts on an ``align``-byte boundary
    (numpy gives 16).

    Examples
    --------
    >>> aligned_empty((4, 5), np.float32).ctypes.data % 4096
    0
    """
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    buf = np.empty(n + align, np.uint8)
    off = (-buf.ctypes.data) % align
    out = buf[off:off + n].view(dtype).reshape(shape)
    if fill is not None:
        out[...] = fill
    return out


class MemmapSource(Source):
    """A C-ordered raw block of a file (MRC data block, uncompressed TIFF)."""

    def __init__(self, path, shape, dtype, offset):
        self.path = str(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.offset = int(offset)

    #: bytes mapped at a time: bounds the file pages resident on behalf of one read
    WINDOW = 64 << 20

    def read(self, key):
        """Copy the region out of short-lived memory-mapped windows of the file.

        Only the requested columns are copied (reading whole rows costs ``nx / width``
        times more for chunked reads), and each window is unmapped before the next, so
        resident memory is the block itself plus one window.
        """
        nz, ny, nx = self.shape if self.ndim == 3 else (1,) + tuple(self.shape)
        if self.ndim != 3:
            key = (slice(0, 1, 1),) + tuple(key)
        zs, ys, xs = key
        zr, yr = range(zs.start, zs.stop, zs.step), range(ys.start, ys.stop, ys.step)  # normalised slices
        nxr = len(range(xs.start, xs.stop, xs.step))
        xs = slice(xs.start, xs.stop if xs.stop >= 0 else None, xs.step)  # -1 means 'past 0' here
        out = aligned_empty((len(zr), len(yr), nxr), self.dtype.newbyteorder("="))
        if out.size:
            item = self.dtype.itemsize
            row, plane = nx * item, ny * nx * item
            y0, y1 = min(yr[0], yr[-1]), max(yr[0], yr[-1]) + 1
            span = (y1 - y0) * row  # bytes of one z plane that the region touches
            per = max(1, self.WINDOW // max(plane, 1)) if len(zr) > 1 and zr.step == 1 else 1
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                for i in range(0, len(zr), per):
                    zk = zr[i:i + per]
                    start = self.offset + (zk[0] * ny + y0) * row
                    stop = start + (len(zk) - 1) * plane + span
                    if stop > size:
                        raise FormatError("file ended early (truncated?)", self.path)
                    base = start - start % mmap.ALLOCATIONGRANULARITY
                    # MAP_POPULATE maps the cached pages in one call: ~15% faster than faulting them in
                    with mmap.mmap(fh.fileno(), stop - base, flags=mmap.MAP_SHARED | _POPULATE,
                                   prot=mmap.PROT_READ, offset=base) as mm:
                        v = np.ndarray((len(zk), y1 - y0, nx), self.dtype, buffer=mm, offset=start - base,
                                       strides=(plane, row, item))
                        out[i:i + len(zk)] = v[:, yr.start - y0::yr.step, xs]
                        del v  # the window cannot close while a view exports its buffer
        return out if self.ndim == 3 else out[0]


def slabs(shape, nbytes=256 << 20, itemsize=4):
    """Slices of whole z slabs of about ``nbytes`` each, covering ``shape`` (the default write blocks).

    Examples
    --------
    >>> slabs((5, 1024, 1024), nbytes=8 << 20)
    [(slice(0, 2, None),), (slice(2, 4, None),), (slice(4, 5, None),)]
    """
    step = max(1, nbytes // max(1, int(np.prod(shape[1:])) * itemsize))
    return [(slice(z, min(z + step, shape[0])),) for z in range(0, shape[0], step)]
