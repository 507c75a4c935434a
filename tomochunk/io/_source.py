"""Picklable, lazily-read array sources behind ``dask.array.from_array``.

A source holds a path and the layout of the data, never an open handle or a
memory map, so a Dask graph that carries it pickles to a few hundred bytes and
each worker opens the file itself.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import warnings

import numpy as np

from ..errors import FormatError, ValueProblem


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
        key = _expand_key(key, self.shape)
        out = self.read(_normalize_key(key, self.shape))
        # dask fuses ``x[16]`` into the getter, so integer keys reach us: drop their axes as numpy does
        ints = [i for i, k in enumerate(key) if isinstance(k, (int, np.integer))]
        return out.reshape([n for i, n in enumerate(out.shape) if i not in ints]) if ints else out

    def read(self, key: tuple[slice, ...]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def _expand_key(key, shape) -> tuple:
    """``key`` as a tuple of one entry per axis (Ellipsis and missing axes filled with ``:``)."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1:]
    return key + (slice(None),) * (len(shape) - len(key))


def _normalize_key(key, shape):
    key = _expand_key(key, shape)
    out = []
    for k, n in zip(key, shape):
        if isinstance(k, (int, np.integer)):
            k = int(k) % n if n else int(k)
            out.append(slice(k, k + 1, 1))  # Source.__getitem__ drops these axes again
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


def check_voxel_size(value, what="voxel_size", path=None) -> float:
    """``value`` as a positive, finite float in Å, or a one-line :class:`ValueProblem`.

    Examples
    --------
    >>> check_voxel_size("7.5")
    7.5
    >>> check_voxel_size(0)
    Traceback (most recent call last):
    ...
    tomochunk.errors.ValueProblem: voxel_size must be a positive, finite number of Å, got 0
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueProblem(f"{what} must be a positive, finite number of Å, got {value!r}", path) from None
    if not math.isfinite(v) or v <= 0:
        raise ValueProblem(f"{what} must be a positive, finite number of Å, got {value!r}", path)
    return v


_UNIT = re.compile(r"^\s*([-+0-9.eE]+|nan|inf)\s*(a|å|angstroms?|nm|nanometers?|um|µm|μm|micrometers?)?\s*$",
                   re.IGNORECASE)
_TO_ANGSTROM = {"a": 1.0, "å": 1.0, "nm": 10.0, "um": 1e4, "µm": 1e4, "μm": 1e4}


def parse_voxel_size(value, path, what="voxel_size"):
    """A voxel size stored in a file (number, array, or text with a unit: ``"10 A"``, ``"1.2 nm"``) in Å.

    ``None`` stays ``None`` (not recorded). Anything that is not a positive, finite length
    raises :class:`FormatError` naming the file and the attribute.

    Examples
    --------
    >>> parse_voxel_size("10 A", "t.h5"), parse_voxel_size(b"1.2 nm", "t.h5"), parse_voxel_size([4.0], "t.h5")
    (10.0, 12.0, 4.0)
    >>> parse_voxel_size("ten", "t.h5")
    Traceback (most recent call last):
    ...
    tomochunk.errors.FormatError: t.h5: voxel_size attribute 'ten' is not a length (expected e.g. 10 or '10 A')
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "SUO":
        value = value.ravel()[0] if value.size else ""
        value = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    scale = 1.0
    if isinstance(value, str):
        m = _UNIT.match(value)
        if not m:
            raise FormatError(f"{what} attribute {value!r} is not a length (expected e.g. 10 or '10 A')", path)
        unit = (m.group(2) or "a").lower()
        unit = "a" if unit.startswith("angstrom") else "nm" if unit.startswith("nanometer") else \
            "um" if unit.startswith("micrometer") else unit
        number, scale = m.group(1), _TO_ANGSTROM[unit]
    else:
        flat = np.ravel(np.asarray(value))
        if flat.size == 0 or flat.dtype.kind not in "iuf":
            raise FormatError(f"{what} attribute {value!r} is not a length (expected e.g. 10 or '10 A')", path)
        if flat.size > 1 and not np.allclose(flat, flat[0]):
            warn(f"anisotropic {what} {flat.tolist()}; using {float(flat[-1])} (x)", path)
        number = flat[-1]
    try:
        v = float(number) * scale
    except ValueError:
        raise FormatError(f"{what} attribute {value!r} is not a length", path) from None
    if not math.isfinite(v) or v <= 0:
        raise FormatError(f"{what} attribute {value!r} is not a positive, finite length", path)
    return v


def check_chunks(chunks, ndim, what="chunks"):
    """``None``, or a tuple of ``ndim`` positive ints (one int is used for every axis); else ValueProblem.

    Examples
    --------
    >>> check_chunks(64, 3), check_chunks((8, 16, 16), 3), check_chunks(None, 3)
    ((64, 64, 64), (8, 16, 16), None)
    >>> check_chunks(-8, 3)
    Traceback (most recent call last):
    ...
    tomochunk.errors.ValueProblem: chunks must be positive integers, got -8
    """
    if chunks is None:
        return None
    items = (chunks,) * ndim if isinstance(chunks, (int, np.integer)) else tuple(chunks)
    try:
        ok = len(items) == ndim and all(int(c) == c and int(c) > 0 for c in items)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueProblem(f"{what} must be positive integers, got {chunks!r}"
                           + ("" if len(items) == ndim else f" (expected {ndim} values or one)"))
    return tuple(int(c) for c in items)


class TransposedSource(Source):
    """A lazy axis permutation of another source: ``out[k]`` is ``inner`` axis ``perm[k]``.

    Used for MRC files whose ``mapc, mapr, maps`` are not ``1, 2, 3``: the file is
    read in its own order and each block is transposed to ``[z, y, x]``.

    Examples
    --------
    >>> class Arr(Source):
    ...     def __init__(self, a): self.a, self.shape, self.dtype = a, a.shape, a.dtype
    ...     def read(self, key): return self.a[key]
    >>> a = np.arange(24).reshape(2, 3, 4)
    >>> t = TransposedSource(Arr(a), (2, 1, 0))
    >>> t.shape, bool((t[1:3, :, 0:1] == a.transpose(2, 1, 0)[1:3, :, 0:1]).all())
    ((4, 3, 2), True)
    """

    def __init__(self, inner, perm):
        self.inner, self.perm = inner, tuple(int(p) for p in perm)
        self.shape = tuple(inner.shape[p] for p in self.perm)
        self.dtype = np.dtype(inner.dtype)

    def read(self, key):
        inner_key = [None] * len(self.perm)
        for k, p in enumerate(self.perm):
            inner_key[p] = key[k]
        return np.ascontiguousarray(self.inner.read(tuple(inner_key)).transpose(self.perm))
