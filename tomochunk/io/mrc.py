"""MRC / REC / MAP / ST volumes, read through a memory map and written with mrcfile."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import FormatError, ShapeError
from ._source import MemmapSource, slabs, warn

MRC_SUFFIXES = (".mrc", ".rec", ".map", ".st", ".mrcs", ".ali")
_HEADER_BYTES = 1024


def header_dict(header) -> dict:
    """JSON-serialisable copy of an mrcfile header record."""
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


def read_mrc(path):
    """Open an MRC file lazily.

    Returns
    -------
    source : MemmapSource
        ``[z, y, x]`` data, read on demand.
    meta : dict
        ``voxel_size`` (Å), ``header`` (dict) and ``dims``.
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
        try:
            dtype = mrcfile.utils.data_dtype_from_header(header)
        except ValueError as exc:
            raise FormatError(f"unsupported MRC mode {int(header.mode)} ({exc})", path) from None
        offset = _HEADER_BYTES + int(header.nsymbt)
        voxel_size = float(mrc.voxel_size.x) or 1.0
        hdr = header_dict(header)
    expected = offset + nx * ny * nz * dtype.itemsize
    if size < expected:
        raise FormatError(f"truncated MRC: {size} bytes, the header ({nz}x{ny}x{nx} "
                          f"{dtype.name}) needs {expected}", path)
    if nz == 1:
        raise ShapeError(f"expected a 3D volume, got a 2D image of {ny}x{nx}", path)
    source = MemmapSource(path, (nz, ny, nx), dtype, offset)
    return source, {"voxel_size": voxel_size, "header": hdr, "dims": ("z", "y", "x")}


def write_mrc(array, path, *, voxel_size=None, block_slices=None) -> None:
    """Write a 3D array (numpy or dask) to MRC, block by block, through a temporary name."""
    import mrcfile

    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    shape, dtype = tuple(array.shape), np.dtype(array.dtype)
    if len(shape) != 3:
        raise ShapeError(f"MRC holds 3D volumes, got shape {shape}", path)
    if dtype == np.float64:
        dtype = np.dtype(np.float32)
    elif dtype == np.bool_:
        dtype = np.dtype(np.int8)
    elif dtype == np.int64 or dtype == np.int32 or dtype == np.uint32:
        dtype = np.dtype(np.float32)  # MRC has no 32/64-bit integer mode
    mrc = mrcfile.new_mmap(str(tmp), shape=shape, mrc_mode=mrcfile.utils.mode_from_dtype(dtype),
                           overwrite=True)
    try:
        for sl in (block_slices or slabs(shape)):
            mrc.data[sl] = np.asarray(array[sl]).astype(dtype, copy=False)
        if voxel_size:
            mrc.voxel_size = float(voxel_size)
        mrc.update_header_stats()
    finally:
        mrc.close()
    os.replace(tmp, path)

