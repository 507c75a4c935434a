"""One lazy view of every volume format: ``open_volume`` and ``write_volume``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._blocks import block_slices
from .._log import get_logger
from .._names import tomo_name
from ..errors import FormatError, MissingError, ShapeError
from ._source import warn
from .h5 import H5_SUFFIXES, read_h5, write_h5
from .mrc import MRC_SUFFIXES, read_mrc, write_mrc
from .tiff import TIFF_SUFFIXES, read_tiff_folder, read_tiff_stack

log = get_logger(__name__)


def is_zarr(path) -> bool:
    """A ``.zarr`` path, or a folder holding Zarr metadata (a group inside a store, e.g. ``labels/classes``)."""
    p = Path(path)
    return p.suffix.lower() == ".zarr" or any((p / m).exists() for m in (".zgroup", ".zarray", "zarr.json"))


def _kind(path: Path) -> str:
    if is_zarr(path):
        return "zarr"
    if path.is_dir():
        return "tiff-folder"
    suf = path.suffix.lower()
    for kind, sufs in (("mrc", MRC_SUFFIXES), ("h5", H5_SUFFIXES), ("tiff", TIFF_SUFFIXES)):
        if suf in sufs:
            return kind
    raise FormatError(f"unknown volume format {suf!r} (expected MRC, HDF5, TIFF, a TIFF folder or Zarr)", path)


def open_source(path, *, dataset=None, level=0):
    """Open ``path`` lazily: ``(array-like or dask array, meta)``, meta holding dims, voxel_size, attrs."""
    path = Path(path)
    if not path.exists():
        raise MissingError("no such file or folder", path)
    kind = _kind(path)
    if kind == "zarr":
        from .omezarr import read_multiscale

        return read_multiscale(path, level)
    if kind == "mrc":
        src, meta = read_mrc(path)
    elif kind == "h5":
        src, meta = read_h5(path, dataset)
    elif kind == "tiff":
        src, meta = read_tiff_stack(path)
    else:
        src, meta = read_tiff_folder(path)
    meta.setdefault("attrs", {})
    if level:
        raise FormatError(f"level {level} requested, but only Zarr stores hold several levels", path)
    return src, meta


def _default_chunks(shape, dims):
    if dims[0] == "t":
        return (min(64, shape[0]),) + tuple(shape[1:])
    return tuple(min(256, s) for s in shape)


def open_volume(path, *, dataset=None, level=0, chunks=None, check_finite=False):
    """Open a tomogram or movie as a lazy, dask-backed ``xarray.DataArray``.

    Parameters
    ----------
    path : str or Path
        ``.mrc/.rec/.map/.st`` (memory-mapped), ``.h5/.hdf5``, a ``.tif`` stack, a folder of
        TIFF frames (a movie, dims ``t, y, x``) or a ``.zarr`` store (a plain array or an
        OME-Zarr multiscale group, NGFF 0.4 or 0.5).
    dataset : str, optional
        HDF5 dataset (default: ``dataset``, else the single 3D dataset).
    level : int
        Multiscale level of an OME-Zarr store (0 = full resolution).
    chunks : tuple, optional
        Dask chunks (default: the storage chunks, or 256³ / 64 frames).
    check_finite : bool
        Count NaN/Inf voxels now (one pass over the data) and warn with the count.

    Returns
    -------
    xarray.DataArray
        Dims ``(z, y, x)``, ``(t, y, x)`` or ``(c, z, y, x)``; spatial coords in Å;
        ``attrs["voxel_size"]`` in Å and ``attrs["source"]``.

    Examples
    --------
    >>> vol = open_volume("tomo.mrc")  # doctest: +SKIP
    >>> vol.dims, vol.attrs["voxel_size"]  # doctest: +SKIP
    (('z', 'y', 'x'), 10.0)
    """
    import dask.array as da
    import xarray as xr

    src, meta = open_source(path, dataset=dataset, level=level)
    dims = tuple(meta["dims"])
    if isinstance(src, da.Array):
        arr = src if chunks is None else src.rechunk(chunks)
    else:
        arr = da.from_array(src, chunks=chunks or _default_chunks(src.shape, dims), asarray=False,
                            lock=False, meta=np.empty((0,) * src.ndim, src.dtype),
                            name=f"open-{Path(path).name}-{abs(hash((str(Path(path).resolve()), dataset)))}")
    if arr.ndim != len(dims):
        raise ShapeError(f"array is {arr.ndim}D but its axes are {dims}", path)
    vs = float(meta.get("voxel_size") or 1.0)
    coords = {d: np.arange(n) * vs if d in "zyx" else np.arange(n) for d, n in zip(dims, arr.shape)}
    attrs = {k: v for k, v in meta.get("attrs", {}).items()}
    attrs.update(voxel_size=vs, source=str(path), units="angstrom")
    if "header" in meta:
        attrs["mrc_header"] = meta["header"]
    out = xr.DataArray(arr, dims=dims, coords=coords, attrs=attrs, name=tomo_name(path))
    if check_finite and arr.dtype.kind == "f":
        n = int((~da.isfinite(arr)).sum().compute())
        if n:
            warn(f"{n} NaN/Inf voxels", path)
    return out


def _as_dask(array):
    """(dask array, dims, voxel_size, attrs) from numpy, dask or xarray input."""
    import dask.array as da
    import xarray as xr

    if isinstance(array, xr.DataArray):
        dims, attrs = tuple(array.dims), dict(array.attrs)
        data = array.data
    else:
        data, attrs = array, {}
        dims = {3: ("z", "y", "x"), 4: ("c", "z", "y", "x")}.get(np.ndim(array))
    if not isinstance(data, da.Array):
        data = np.asarray(data)
        data = da.from_array(data, chunks=data.shape or ())
    return data, dims, attrs.get("voxel_size"), attrs


def write_volume(array, path, *, voxel_size=None, levels=3, chunks=None, overwrite=False, label=None,
                 dataset="dataset", ngff="0.4"):
    """Write a volume (numpy, dask or xarray) to ``.mrc``, ``.h5`` or an OME-Zarr ``.zarr`` store.

    Dask input is written block by block and never gathered whole. Files are
    written under a temporary name and renamed; Zarr stores get their completion
    marker last.

    Parameters
    ----------
    array : array-like
        ``[z, y, x]`` (or ``[t, y, x]``/``[c, z, y, x]`` for Zarr, via xarray dims).
    voxel_size : float, optional
        Å per voxel (default: ``array.attrs["voxel_size"]`` or 1).
    levels : int
        Multiscale levels for Zarr output.
    label : bool, optional
        Zarr only: downsample by striding (labels) rather than by the mean (default: integer dtype).

    Examples
    --------
    >>> write_volume(np.zeros((32, 64, 64), np.float32), "out.mrc", voxel_size=10.0)  # doctest: +SKIP
    """
    from .omezarr import PyramidWriter

    from ..errors import ExistsError

    path = Path(path)
    data, dims, vs, attrs = _as_dask(array)
    voxel_size = float(voxel_size or vs or 1.0)
    if dims is None or len(dims) != data.ndim:
        raise ShapeError(f"cannot write a {data.ndim}D array as a volume (expected 3D)", path)
    suf = path.suffix.lower()
    if suf == ".zarr":
        label = data.dtype.kind in "iub" if label is None else label
        w = PyramidWriter(path, data.shape, data.dtype, dims=dims, voxel_size=voxel_size, levels=levels,
                          chunks=chunks, label=label, overwrite=overwrite, ngff=ngff,
                          attrs={k: v for k, v in attrs.items() if k in ("mrc_header",)}, name=path.stem)
        stats = w.write(lambda region: data[region].compute())
        w.finish(stats=stats)
        return path
    if path.exists() and not overwrite:
        raise ExistsError("output exists; pass overwrite=True to replace it", path)
    if data.ndim != 3:
        raise ShapeError(f"{suf} holds 3D volumes, got {data.ndim}D", path)
    blocks = [sl for _, sl in block_slices(data.chunks)]
    computed = _BlockReader(data)
    if suf in MRC_SUFFIXES:
        write_mrc(computed, path, voxel_size=voxel_size, block_slices=blocks)
    elif suf in H5_SUFFIXES:
        write_h5(computed, path, voxel_size=voxel_size, dataset=dataset, block_slices=blocks)
    else:
        raise FormatError(f"cannot write {suf!r}; use .mrc, .h5 or .zarr", path)
    return path


class _BlockReader:
    """``reader[slices]`` computes just that block of a dask array."""

    def __init__(self, data):
        self.data, self.shape, self.dtype = data, data.shape, data.dtype

    def __getitem__(self, key):
        return self.data[key].compute()
