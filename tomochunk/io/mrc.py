"""MRC / REC / MAP / ST volumes, read through a memory map and written with mrcfile.

Reading follows MRC2014 and IMOD's conventions where they matter for values:

- ``mapc, mapr, maps`` (which of x, y, z the columns, rows and sections are) are
  honoured: a file stored in another axis order is transposed lazily to ``[z, y, x]``.
- Mode 0 is signed bytes in MRC2014. IMOD marks its files with ``imodStamp``
  (1146047817, header byte 152) and ``imodFlags`` (byte 156), whose bit 0 means
  "bytes are signed"; an IMOD file without that bit holds *unsigned* bytes and is
  read as ``uint8``.
- Complex modes (3, 4) and RGB (16) are refused: tomochunk works on real maps.
- The origin (header ``origin``, Å) and ``nxstart, nystart, nzstart`` are kept:
  ``meta["origin"]`` is the Å position of voxel ``[0, 0, 0]`` as ``(z, y, x)``, taken from
  the origin where it is set, else from the start indices times the voxel size
  (UCSF Chimera's rule), and ``meta["nstart"]`` holds the start indices ``(z, y, x)``.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from pathlib import Path

import numpy as np

from .._log import get_logger
from ..errors import FormatError, ShapeError
from ._source import MemmapSource, TransposedSource, slabs, warn

log = get_logger(__name__)

MRC_SUFFIXES = (".mrc", ".rec", ".map", ".st", ".mrcs", ".ali")
_HEADER_BYTES = 1024
#: IMOD's stamp at header byte 152; its flags word follows at byte 156
IMOD_STAMP = 1146047817
IMOD_SIGNED_BYTES = 1
_REFUSED_MODES = {3: "complex int16", 4: "complex float32", 16: "RGB"}
#: integer dtypes MRC holds as they are (mode 0, 1, 6); wider integers must fit one of them
_INT_MODES = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.uint16))


def header_dict(header) -> dict:
    """JSON-serialisable copy of an mrcfile header record (kept as ``attrs["mrc_header"]``)."""
    out = {}
    for name in header.dtype.names:
        v = header[name]
        if name == "label":
            out[name] = [bytes(x).rstrip(b"\0 ").decode("latin-1") for x in np.ravel(v)]
            out[name] = [s for s in out[name] if s]
        elif v.dtype.names:
            out[name] = {k: np.asarray(v[k]).tolist() for k in v.dtype.names}
        elif v.dtype.kind in "SV":
            out[name] = bytes(v).decode("latin-1")
        else:
            out[name] = np.asarray(v).tolist()
    return out


def axis_permutation(mapc, mapr, maps, path=None) -> tuple:
    """The transpose that turns the file's ``[section, row, column]`` array into ``[z, y, x]``.

    Examples
    --------
    >>> axis_permutation(1, 2, 3)
    (0, 1, 2)
    >>> axis_permutation(3, 2, 1)  # columns are z: the file is [x, y, z]
    (2, 1, 0)
    """
    disk = (int(maps), int(mapr), int(mapc))  # the axis (1=x, 2=y, 3=z) of each file dimension
    if sorted(disk) != [1, 2, 3]:
        raise FormatError(f"invalid axis order mapc, mapr, maps = {mapc}, {mapr}, {maps} in the header "
                          "(expected a permutation of 1, 2, 3)", path)
    return tuple(disk.index(a) for a in (3, 2, 1))


def _imod_flags(raw: bytes, endian: str):
    """``imodFlags`` when the header carries IMOD's stamp, else None."""
    stamp, flags = struct.unpack(endian + "ii", raw[152:160])
    return flags if stamp == IMOD_STAMP else None


def read_mrc(path):
    """Open an MRC file lazily.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    source : MemmapSource or TransposedSource
        ``[z, y, x]`` data, read on demand.
    meta : dict
        ``voxel_size`` (Å), ``origin`` and ``nstart`` (``z, y, x``), ``header`` (dict) and ``dims``.

    Examples
    --------
    >>> import mrcfile, tempfile
    >>> p = Path(tempfile.mkdtemp()) / "t.mrc"
    >>> with mrcfile.new(p) as m:
    ...     m.set_data(np.zeros((2, 3, 4), np.float32)); m.voxel_size = 5.0
    >>> src, meta = read_mrc(p)
    >>> src.shape, meta["voxel_size"], meta["origin"]
    ((2, 3, 4), 5.0, (0.0, 0.0, 0.0))
    """
    import mrcfile

    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise FormatError("empty file", path)
    if size < _HEADER_BYTES:
        raise FormatError(f"truncated MRC: {size} bytes, shorter than the 1024-byte header", path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = mrcfile.open(str(path), mode="r", header_only=True, permissive=True)
        except Exception as exc:  # mrcfile raises ValueError/OSError for garbage
            raise FormatError(f"not a readable MRC file ({exc})", path) from None
    with mrc:
        header = mrc.header
        if header is None or mrc.header.map != mrcfile.constants.MAP_ID:
            raise FormatError("not an MRC file (no 'MAP ' identifier in the header)", path)
        for w in caught:
            if "machine stamp" in str(w.message).lower():
                warn("zero or unknown machine stamp; assuming little-endian byte order", path)
        nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
        if min(nx, ny, nz) <= 0:
            raise FormatError(f"invalid dimensions nx={nx} ny={ny} nz={nz} in the header", path)
        mode = int(header.mode)
        if mode in _REFUSED_MODES:
            raise FormatError(f"MRC mode {mode} ({_REFUSED_MODES[mode]}) is not supported: tomochunk reads "
                              "real-valued maps only", path)
        try:
            dtype = mrcfile.utils.data_dtype_from_header(header)
        except ValueError as exc:
            raise FormatError(f"unsupported MRC mode {mode} ({exc})", path) from None
        endian = np.dtype(header.mode.dtype).str[0]
        if mode == 0:
            with open(path, "rb") as fh:
                flags = _imod_flags(fh.read(_HEADER_BYTES), endian)
            if flags is not None and not flags & IMOD_SIGNED_BYTES:
                dtype = np.dtype(np.uint8)  # IMOD's unsigned bytes (MRC2014 alone would say int8)
        perm = (0, 1, 2)
        if (int(header.mapc), int(header.mapr), int(header.maps)) == (0, 0, 0):
            warn("axis order mapc, mapr, maps is 0, 0, 0 in the header; assuming 1, 2, 3 (x, y, z)", path)
        else:
            perm = axis_permutation(header.mapc, header.mapr, header.maps, path)
        vs = mrc.voxel_size
        voxel_size = _header_voxel_size((float(vs.z), float(vs.y), float(vs.x)), path)
        # nxstart/nystart/nzstart count columns, rows and sections: map them to x, y, z
        starts_crs = (int(header.nxstart), int(header.nystart), int(header.nzstart))
        axis_of = (int(header.mapc or 1), int(header.mapr or 2), int(header.maps or 3))
        start_xyz = {a: s for a, s in zip(axis_of, starts_crs)}
        nstart = (start_xyz[3], start_xyz[2], start_xyz[1])
        o = header.origin
        origin = (float(o.z), float(o.y), float(o.x))
        if not all(math.isfinite(v) for v in origin):
            raise FormatError(f"non-finite origin {origin[::-1]} (x, y, z) in the header", path)
        if not any(origin):
            origin = tuple(float(s * voxel_size) for s in nstart)
        offset = _HEADER_BYTES + int(header.nsymbt)
        hdr = header_dict(header)
    expected = offset + nx * ny * nz * dtype.itemsize
    if size < expected:
        raise FormatError(f"truncated MRC: {size} bytes, the header ({nz}x{ny}x{nx} "
                          f"{dtype.name}) needs {expected}", path)
    source = MemmapSource(path, (nz, ny, nx), dtype, offset)
    if perm != (0, 1, 2):
        log.info("%s: axis order mapc, mapr, maps = %s, %s, %s; transposed to z, y, x", path, *axis_of)
        source = TransposedSource(source, perm)
    if source.shape[0] == 1:
        raise ShapeError(f"expected a 3D volume, got a 2D image of {source.shape[1]}x{source.shape[2]}", path)
    return source, {"voxel_size": voxel_size, "origin": origin, "nstart": nstart, "header": hdr,
                    "dims": ("z", "y", "x")}


def _header_voxel_size(zyx, path) -> float:
    """The x voxel size of the header; 0 (not set, as MRC allows) gives 1.0 with a warning."""
    z, y, x = zyx
    if not all(math.isfinite(v) for v in zyx) or min(zyx) < 0:
        raise FormatError(f"invalid voxel size {x}, {y}, {z} (x, y, z) in the header", path)
    if x == 0:
        warn("no voxel size in the header (cell size 0); using 1.0 Å", path)
        return 1.0
    if any(v and abs(v - x) > 1e-3 * x for v in (y, z)):
        warn(f"anisotropic voxel size {x}, {y}, {z} Å (x, y, z); using x", path)
    return x


def mrc_dtype(dtype, value_range=None, path=None) -> np.dtype:
    """The dtype an array is stored as in MRC: values are kept exactly, or refused.

    ``value_range`` (min, max) is needed for integers wider than 16 bits, which are
    stored as int16 or uint16 when they fit, never cast to float32.

    Examples
    --------
    >>> mrc_dtype(np.float64), mrc_dtype(np.bool_), mrc_dtype(np.uint8)
    (dtype('float32'), dtype('int8'), dtype('uint16'))
    >>> mrc_dtype(np.int32, (0, 300)), mrc_dtype(np.int64, (0, 40000))
    (dtype('int16'), dtype('uint16'))
    >>> mrc_dtype(np.int32, (0, 16777217), "l.mrc")
    Traceback (most recent call last):
    ...
    tomochunk.errors.ShapeError: l.mrc: values 0..16777217 (int32) fit no MRC integer mode (int8, int16, uint16); write .zarr or .h5 instead
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise ShapeError(f"complex data ({dtype}) is not written to MRC by tomochunk", path)
    if dtype == np.float64:
        return np.dtype(np.float32)  # MRC has no float64 mode; a float map keeps float precision
    if dtype in (np.dtype(np.float32), np.dtype(np.float16)):
        return dtype
    if dtype == np.bool_:
        return np.dtype(np.int8)
    if dtype == np.uint8:
        return np.dtype(np.uint16)  # mode 0 is signed in MRC2014: uint16 keeps 128..255 for every reader
    if dtype in _INT_MODES:
        return dtype
    if dtype.kind in "iu":
        if value_range is None:
            raise ShapeError(f"{dtype} data needs its value range to choose an MRC mode", path)
        lo, hi = (int(v) for v in value_range)
        for cand in (np.dtype(np.int16), np.dtype(np.uint16)):
            if np.iinfo(cand).min <= lo and hi <= np.iinfo(cand).max:
                return cand
        raise ShapeError(f"values {lo}..{hi} ({dtype}) fit no MRC integer mode (int8, int16, uint16); "
                         "write .zarr or .h5 instead", path)
    raise ShapeError(f"{dtype} data has no MRC mode", path)


def write_mrc(array, path, *, voxel_size=None, block_slices=None, value_range=None, origin=None,
              nstart=None, labels=None) -> None:
    """Write a 3D array (numpy or dask) to MRC, block by block, through a temporary name.

    Parameters
    ----------
    array : array-like
        ``[z, y, x]``; indexing it with ``block_slices`` gives numpy blocks.
    voxel_size : float, optional
        Å per voxel.
    block_slices : list of tuple of slice, optional
        The blocks to write (default: z slabs of about 256 MB).
    value_range : (min, max), optional
        For integer data wider than 16 bits (see :func:`mrc_dtype`); computed here when omitted.
    origin : (z, y, x), optional
        Å position of voxel ``[0, 0, 0]``: written as the header origin unless it is just
        ``nstart * voxel_size``.
    nstart : (z, y, x), optional
        ``nzstart, nystart, nxstart``.
    labels : list of str, optional
        Header text labels (80 characters each, at most 10), e.g. the label-map marker.

    Examples
    --------
    >>> import mrcfile, tempfile
    >>> p = Path(tempfile.mkdtemp()) / "l.mrc"
    >>> write_mrc(np.full((2, 3, 4), 70000, np.int32) - 69999, p, voxel_size=2.0)
    >>> with mrcfile.open(p) as m:
    ...     print(m.data.dtype.name, m.data.max())
    int16 1
    """
    import mrcfile

    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    shape, src_dtype = tuple(array.shape), np.dtype(array.dtype)
    if len(shape) != 3:
        raise ShapeError(f"MRC holds 3D volumes, got shape {shape}", path)
    blocks = block_slices or slabs(shape)
    if src_dtype.kind in "iu" and src_dtype.itemsize > 2 and value_range is None:
        lo, hi = None, None
        for sl in blocks:
            b = np.asarray(array[sl])
            if b.size:
                lo = int(b.min()) if lo is None else min(lo, int(b.min()))
                hi = int(b.max()) if hi is None else max(hi, int(b.max()))
        value_range = (lo or 0, hi or 0)
    dtype = mrc_dtype(src_dtype, value_range, path)
    if dtype != src_dtype:
        log.info("%s: %s data stored as %s", path, src_dtype, dtype)
    mrc = mrcfile.new_mmap(str(tmp), shape=shape, mrc_mode=mrcfile.utils.mode_from_dtype(dtype),
                           overwrite=True)
    try:
        for sl in blocks:
            mrc.data[sl] = np.asarray(array[sl]).astype(dtype, copy=False)
        vs = float(voxel_size) if voxel_size else 1.0
        if voxel_size:
            mrc.voxel_size = vs
        if nstart is not None:
            mrc.header.nzstart, mrc.header.nystart, mrc.header.nxstart = (int(v) for v in nstart)
        if origin is not None:
            derived = tuple(float(s) * vs for s in (nstart or (0, 0, 0)))
            if not np.allclose(origin, derived, rtol=0, atol=1e-3):
                mrc.header.origin.z, mrc.header.origin.y, mrc.header.origin.x = (float(v) for v in origin)
        for text in (labels or [])[:10]:
            mrc.add_label(str(text)[:80])
        mrc.update_header_stats()
    finally:
        mrc.close()
    if dtype == np.int8:
        _stamp_signed_bytes(tmp)
    os.replace(tmp, path)


def _stamp_signed_bytes(path) -> None:
    """Mark a mode-0 file as IMOD does for signed bytes, so IMOD does not read them as unsigned."""
    with open(path, "r+b") as fh:
        fh.seek(152)
        fh.write(struct.pack("<ii", IMOD_STAMP, IMOD_SIGNED_BYTES))
