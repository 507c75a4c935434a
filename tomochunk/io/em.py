"""TOM / PyTOM ``.em`` volumes (the format DeepFinder users hold), through the ``emfile`` package.

The EM format (TOM toolbox, ``tom_emread.m``) is a 512-byte header and the raw
voxels, x fastest:

- byte 0: machine (6 = PC, little-endian; 0, 3, 4, 5 = big-endian machines), byte 3: data type
  (1 int8, 2 int16, 4 int32, 5 float32, 9 float64; 8 and 10 are complex and refused);
- bytes 4-16: ``xdim, ydim, zdim`` (int32);
- bytes 16-96: comment; then 40 int32 parameters, the 7th of which (``OBJ``) is the
  object pixel size in nm × 1000 (``Objectpixelsize = Parameter(7) / 1000`` in TOM).

The header is read and written with ``emfile``; the voxels are memory-mapped (read) and
written block by block (write), so neither side holds the volume in memory.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import FormatError, ShapeError
from ._source import MemmapSource, slabs, warn

EM_SUFFIXES = (".em",)
HEADER_BYTES = 512
_LITTLE, _BIG = {1, 6}, {0, 3, 4, 5}
_DTYPES = {1: np.int8, 2: np.int16, 4: np.int32, 5: np.float32, 9: np.float64}
_COMPLEX = {8: "complex float32", 10: "complex float64"}


def read_em(path):
    """Open an EM file lazily.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    source : MemmapSource
        ``[z, y, x]`` data, read on demand.
    meta : dict
        ``voxel_size`` (Å, from ``OBJ``; 1 with a warning where it is 0), ``dims``, ``em_header``.

    Examples
    --------
    >>> import emfile, tempfile
    >>> p = Path(tempfile.mkdtemp()) / "t.em"
    >>> emfile.write(p, np.arange(24, dtype=np.float32).reshape(2, 3, 4), em_header_params(OBJ=1000))
    >>> src, meta = read_em(p)
    >>> src.shape, meta["voxel_size"], float(src[1:2, 2:3, 3:4].ravel()[0])
    ((2, 3, 4), 10.0, 23.0)
    """
    import emfile

    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise FormatError("empty file", path)
    if size < HEADER_BYTES:
        raise FormatError(f"truncated EM file: {size} bytes, shorter than the 512-byte header", path)
    with open(path, "rb") as fh:
        raw = fh.read(HEADER_BYTES)
    machine, code = raw[0], raw[3]
    if machine in _LITTLE:
        endian = "<"
    elif machine in _BIG:
        endian = ">"
    else:
        raise FormatError(f"not an EM file (machine byte {machine} is none of TOM's 0-6)", path)
    if code in _COMPLEX:
        raise FormatError(f"EM data type {code} ({_COMPLEX[code]}) is not supported: tomochunk reads "
                          "real-valued maps only", path)
    if code not in _DTYPES:
        raise FormatError(f"not an EM file (unknown data type {code})", path)
    nx, ny, nz = struct.unpack(endian + "iii", raw[4:16])
    header = {}
    if endian == "<":  # emfile unpacks in the machine's own (little-endian) order
        try:
            header, _ = emfile.read(str(path), header_only=True)
        except Exception as exc:
            raise FormatError(f"not a readable EM file ({exc})", path) from None
        # emfile gives text fields base64-encoded: keep its numbers, and the comment as text
        header = {k: v for k, v in header.items() if not isinstance(v, bytes)}
        header["comment"] = raw[16:96].split(b"\0")[0].decode("latin-1").strip()
    obj = struct.unpack(endian + "i", raw[96 + 6 * 4:96 + 7 * 4])[0]
    if min(nx, ny, nz) <= 0:
        raise FormatError(f"invalid dimensions {nx}x{ny}x{nz} (x, y, z) in the header", path)
    dtype = np.dtype(_DTYPES[code]).newbyteorder(endian)
    expected = HEADER_BYTES + nx * ny * nz * dtype.itemsize
    if size < expected:
        raise FormatError(f"truncated EM file: {size} bytes, the header ({nz}x{ny}x{nx} {dtype.name}) "
                          f"needs {expected}", path)
    if nz == 1:
        raise ShapeError(f"expected a 3D volume, got a 2D image of {ny}x{nx}", path)
    if obj < 0:
        raise FormatError(f"invalid object pixel size {obj / 1000} nm in the header", path)
    voxel_size = obj / 100.0  # nm * 1000 -> Å
    if not voxel_size:
        warn("no object pixel size in the header; using 1.0 Å", path)
        voxel_size = 1.0
    return MemmapSource(path, (nz, ny, nx), dtype, HEADER_BYTES), \
        {"voxel_size": voxel_size, "dims": ("z", "y", "x"), "em_header": header}


def em_dtype(dtype, value_range=None, path=None) -> np.dtype:
    """The EM data type an array is stored as: values are kept exactly, or refused.

    Examples
    --------
    >>> em_dtype(np.uint8), em_dtype(np.bool_), em_dtype(np.int64, (0, 5)), em_dtype(np.float16)
    (dtype('int16'), dtype('int8'), dtype('int32'), dtype('float32'))
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise ShapeError(f"complex data ({dtype}) is not written to EM by tomochunk", path)
    if dtype == np.bool_:
        return np.dtype(np.int8)
    if dtype == np.float16:
        return np.dtype(np.float32)
    if dtype.kind == "f":
        return dtype if dtype.itemsize in (4, 8) else np.dtype(np.float64)
    for cand in (np.int8, np.int16, np.int32):
        cand = np.dtype(cand)
        if np.can_cast(dtype, cand, "safe"):
            return cand
    if value_range is None:
        raise ShapeError(f"{dtype} data needs its value range to choose an EM data type", path)
    lo, hi = (int(v) for v in value_range)
    if np.iinfo(np.int32).min <= lo and hi <= np.iinfo(np.int32).max:
        return np.dtype(np.int32)
    raise ShapeError(f"values {lo}..{hi} ({dtype}) do not fit EM's int32; write .zarr or .h5 instead", path)


def em_header_params(**values) -> dict:
    """Every ``emfile`` header field, in the format's order, with ``values`` set.

    ``emfile.write`` (0.3) joins its header fields in dict order, and a partial
    ``header_params`` puts the fields it names right after the dimensions; a full,
    ordered dict keeps every field at its offset. Text fields default to empty (emfile
    would fill them with ``A``).

    Examples
    --------
    >>> list(em_header_params(OBJ=1000))[:3], em_header_params(OBJ=1000)["OBJ"]
    (['comment', 'U', 'COE'], 1000)
    """
    from emfile.specs import header_spec

    fixed = ("machine", "version", "unused", "dtype", "xdim", "ydim", "zdim")  # emfile sets these from the data
    out = {k: ("" if form.endswith("s") else 0) for k, form in header_spec.items() if k not in fixed}
    out.update(comment="tomochunk", **values)
    return {k: out[k] for k in header_spec if k in out}


def write_em(array, path, *, voxel_size=None, block_slices=None, value_range=None) -> None:
    """Write a 3D array to an EM file, block by block, through a temporary name.

    The header is written by ``emfile`` (PC byte order, ``OBJ`` = voxel size in nm × 1000);
    the voxels go into a memory map of the file one block at a time.

    Examples
    --------
    >>> import emfile, tempfile
    >>> p = Path(tempfile.mkdtemp()) / "w.em"
    >>> write_em(np.ones((2, 3, 4), np.float32), p, voxel_size=7.5)
    >>> header, data = emfile.read(p)
    >>> header["OBJ"], data.shape
    (750, (2, 3, 4))
    """
    import emfile

    path = Path(path)
    shape = tuple(int(s) for s in array.shape)
    if len(shape) != 3:
        raise ShapeError(f"EM holds 3D volumes, got shape {shape}", path)
    dtype = em_dtype(array.dtype, value_range, path)
    tmp = path.with_name(f".{path.name}.partial")
    obj = 0
    if voxel_size:
        obj = int(round(float(voxel_size) * 100))
        if not 0 < obj < 2**31 or not math.isclose(obj / 100, float(voxel_size), rel_tol=1e-3, abs_tol=0.005):
            raise ShapeError(f"voxel size {voxel_size} Å cannot be stored in EM's integer OBJ field", path)
    nz, ny, nx = shape
    # emfile writes the header from a zero-size array of the right type; the sizes are given here
    emfile.write(tmp, np.empty((0, 0, 0), dtype), em_header_params(xdim=nx, ydim=ny, zdim=nz, OBJ=obj),
                 overwrite=True)
    try:
        with open(tmp, "r+b") as fh:
            fh.truncate(HEADER_BYTES + nx * ny * nz * dtype.itemsize)
        if nx * ny * nz:
            out = np.memmap(tmp, dtype=dtype.newbyteorder("<"), mode="r+", offset=HEADER_BYTES, shape=shape)
            for sl in (block_slices or slabs(shape)):
                out[sl] = np.asarray(array[sl]).astype(dtype, copy=False)
            out.flush()
            del out
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
