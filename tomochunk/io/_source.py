"""Picklable, lazily-read array sources behind ``dask.array.from_array``.

A source holds a path and the layout of the data, never an open handle or a
memory map, so a Dask graph that carries it pickles to a few hundred bytes and
each worker opens the file itself.
"""

from __future__ import annotations

import warnings

import numpy as np


class TomochunkWarning(UserWarning):
    """Warnings about suspicious but readable input (zero MRC machine stamp, NaN voxels, ...)."""


def warn(message: str, path=None) -> None:
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
            out.append(slice(k, k + 1))  # integer indices are squeezed by the caller below
        else:
            out.append(slice(*k.indices(n)))
    return tuple(out)


class MemmapSource(Source):
    """A C-ordered raw block of a file (MRC data block, uncompressed TIFF)."""

    def __init__(self, path, shape, dtype, offset):
        self.path = str(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.offset = int(offset)

    def read(self, key):
        """Positional reads of whole rows into a small buffer: unlike a memory map, nothing
        stays mapped, so resident memory is the block itself."""
        nz, ny, nx = self.shape if self.ndim == 3 else (1,) + tuple(self.shape)
        if self.ndim != 3:
            key = (slice(0, 1),) + tuple(key)
        zs, ys, xs = key
        if zs.step != 1 or ys.step != 1:
            out = self.read((slice(zs.start, zs.stop), slice(ys.start, ys.stop), slice(None)))
            return out[::zs.step, ::ys.step, xs]
        z0, z1, y0, y1 = zs.start, max(zs.start, zs.stop), ys.start, max(ys.start, ys.stop)
        item = self.dtype.itemsize
        full_x = xs.start == 0 and xs.stop == nx and xs.step == 1
        out = np.empty((z1 - z0, y1 - y0, nx if full_x else len(range(*xs.indices(nx)))), self.dtype)
        buf = out if full_x else np.empty((y1 - y0, nx), self.dtype)
        with open(self.path, "rb", buffering=0) as fh:
            for i, z in enumerate(range(z0, z1)):
                target = out[i] if full_x else buf
                fh.seek(self.offset + ((z * ny) + y0) * nx * item)
                n = fh.readinto(memoryview(target).cast("B"))
                if n != target.nbytes:
                    from ..errors import FormatError

                    raise FormatError("file ended early (truncated?)", self.path)
                if not full_x:
                    out[i] = buf[:, xs]
        out = out.astype(self.dtype.newbyteorder("="), copy=False)
        return out if self.ndim == 3 else out[0]
