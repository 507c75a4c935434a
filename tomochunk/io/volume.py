"""One lazy view of every volume format: ``open_volume`` and ``write_volume``."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from .._blocks import block_slices
from .._log import get_logger
from .._names import tomo_name
from ..errors import ExistsError, FormatError, MissingError, ShapeError, ValueProblem
from ._source import check_chunks, check_voxel_size, warn
from .em import EM_SUFFIXES, em_dtype, read_em, write_em
from .h5 import H5_SUFFIXES, read_h5, write_h5
from .mrc import MRC_SUFFIXES, read_mrc, write_mrc
from .omezarr import AXIS_ORDER, PyramidWriter, read_multiscale
from .tiff import TIFF_SUFFIXES, read_tiff_folder, read_tiff_stack

log = get_logger(__name__)


def is_zarr(path) -> bool:
    """A ``.zarr`` path, or a folder holding Zarr metadata (a group inside a store, e.g. ``labels/classes``).

    Examples
    --------
    >>> is_zarr("tomo.ome.zarr"), is_zarr("tomo.mrc")
    (True, False)
    """
    p = Path(path)
    return p.suffix.lower() == ".zarr" or any((p / m).exists() for m in (".zgroup", ".zarray", "zarr.json"))


def volume_kind(path) -> str:
    """The reader that opens ``path``: ``"zarr"``, ``"tiff-folder"``, ``"mrc"``, ``"h5"``, ``"tiff"`` or ``"em"``.

    A folder that is not a Zarr store is a folder of TIFF frames; files are told
    apart by their suffix. An unknown suffix raises :class:`FormatError`.

    Examples
    --------
    >>> volume_kind("a/t1.rec"), volume_kind("b.hdf5"), volume_kind("c.ome.zarr")
    ('mrc', 'h5', 'zarr')
    """
    path = Path(path)
    if is_zarr(path):
        return "zarr"
    if path.is_dir():
        return "tiff-folder"
    suf = path.suffix.lower()
    for kind, sufs in (("mrc", MRC_SUFFIXES), ("h5", H5_SUFFIXES), ("tiff", TIFF_SUFFIXES), ("em", EM_SUFFIXES)):
        if suf in sufs:
            return kind
    raise FormatError(f"unknown volume format {suf!r} (expected MRC, HDF5, TIFF, TOM .em, a TIFF folder or Zarr)", path)


_kind = volume_kind  # the old private name, still imported by ops/tirf.py until it moves to workflows


def open_source(path, *, dataset=None, level=0):
    """Open ``path`` lazily: ``(array-like or dask array, meta)``.

    ``meta`` holds ``dims``, ``voxel_size`` (Å), ``attrs`` and, where the file records one,
    ``origin`` (Å position of voxel ``[0, 0, 0]``, ``z, y, x``; also ``attrs["origin"]`` as a list).

    Examples
    --------
    >>> import tempfile
    >>> p = write_volume(np.zeros((2, 3, 4), np.float32), Path(tempfile.mkdtemp()) / "t.mrc", voxel_size=2.0)
    >>> src, meta = open_source(p)
    >>> src.shape, meta["dims"], meta["attrs"]["origin"]
    ((2, 3, 4), ('z', 'y', 'x'), [0.0, 0.0, 0.0])
    """
    path = Path(path)
    if not path.exists():
        raise MissingError("no such file or folder", path)
    kind = volume_kind(path)
    if kind == "zarr":
        return read_multiscale(path, level)
    if kind == "mrc":
        src, meta = read_mrc(path)
    elif kind == "h5":
        src, meta = read_h5(path, dataset)
    elif kind == "tiff":
        src, meta = read_tiff_stack(path)
    elif kind == "em":
        src, meta = read_em(path)
    else:
        src, meta = read_tiff_folder(path)
    meta.setdefault("attrs", {})
    if meta.get("origin") is not None:  # where convert finds it (it reads meta, not open_volume's attrs)
        meta["attrs"]["origin"] = [float(v) for v in meta["origin"]]
    if level:
        raise FormatError(f"level {level} requested, but only Zarr stores hold several levels", path)
    return src, meta


#: written into the MRC header labels of label maps (Zarr label maps carry NGFF ``image-label``)
LABEL_TAG = "tomochunk: labels"


def is_label_map(meta) -> bool:
    """Whether a volume's metadata marks it as a label map (our writers mark every one they write).

    ``meta`` is an ``open_volume`` attrs dict or an ``open_source`` meta dict: NGFF ``image-label``,
    ``attrs["tomochunk"]["kind"] == "labels"``, or :data:`LABEL_TAG` among the MRC header labels.

    Examples
    --------
    >>> is_label_map({"image-label": {"version": "0.4"}}), is_label_map({"mrc_header": {"label": []}})
    (True, False)
    """
    meta = dict(meta or {})
    for attrs in (meta, meta.get("attrs") or {}):
        if "image-label" in attrs or (attrs.get("tomochunk") or {}).get("kind") == "labels":
            return True
        header = attrs.get("mrc_header") or attrs.get("header") or {}
        if isinstance(header, dict) and LABEL_TAG in (header.get("label") or []):
            return True
    return False


def check_tomogram(meta, path=None, force=False) -> None:
    """Refuse (or, with ``force``, warn about) a label map given where a tomogram is expected.

    Examples
    --------
    >>> check_tomogram({"image-label": {}}, "t_labels.zarr")
    Traceback (most recent call last):
    ...
    tomochunk.errors.ShapeError: t_labels.zarr: is a label map (its metadata says so), not a tomogram; pass --force (force=True) to use it anyway
    """
    if not is_label_map(meta):
        return
    message = "is a label map (its metadata says so), not a tomogram"
    if force:
        warn(message + "; used as one because of --force", path)
        log.warning("%s: %s; used as one because of --force", path, message)
        return
    raise ShapeError(message + "; pass --force (force=True) to use it anyway", path)


def _default_chunks(shape, dims):
    if dims[0] == "t":
        return (min(64, shape[0]),) + tuple(shape[1:])
    return tuple(min(256, s) for s in shape)


def open_volume(path, *, dataset=None, level=0, chunks=None, check_finite=False):
    """Open a tomogram or movie as a lazy, dask-backed ``xarray.DataArray``.

    Parameters
    ----------
    path : str or Path
        ``.mrc/.rec/.map/.st`` and TOM/PyTOM ``.em`` (memory-mapped), ``.h5/.hdf5``, a ``.tif`` stack, a folder of
        TIFF frames (a movie, dims ``t, y, x``) or a ``.zarr`` store (a plain array or an
        OME-Zarr multiscale group, NGFF 0.4 or 0.5).
    dataset : str, optional
        HDF5 dataset (default: ``dataset``, else the single 3D dataset).
    level : int
        Multiscale level of an OME-Zarr store (0 = full resolution).
    chunks : int or tuple of int, optional
        Dask chunks (default: the storage chunks, or 256³ / 64 frames); positive integers.
    check_finite : bool
        Count NaN/Inf voxels now (one pass over the data) and warn with the count.

    Returns
    -------
    xarray.DataArray
        Dims ``(z, y, x)``, ``(t, y, x)`` or ``(c, z, y, x)``; spatial coords in Å, starting at
        ``attrs["origin"]`` (``z, y, x`` Å, where the file records an origin: the MRC origin or
        start indices, the NGFF translation); ``attrs["voxel_size"]`` in Å and ``attrs["source"]``.
        MRC files also keep ``attrs["mrc_nstart"]`` (``nzstart, nystart, nxstart``) and
        ``attrs["mrc_header"]``.

    Examples
    --------
    >>> import mrcfile, tempfile
    >>> p = Path(tempfile.mkdtemp()) / "tomo.mrc"
    >>> with mrcfile.new(p) as m:
    ...     m.set_data(np.zeros((4, 5, 6), np.float32)); m.voxel_size = 10.0
    ...     m.header.origin.x = 1000.0
    >>> vol = open_volume(p)
    >>> vol.dims, vol.attrs["voxel_size"], vol.attrs["origin"], float(vol.x[1])
    (('z', 'y', 'x'), 10.0, (0.0, 0.0, 1000.0), 1010.0)
    """
    explicit = isinstance(chunks, (tuple, list)) and any(isinstance(c, (tuple, list)) for c in chunks)
    if chunks is not None and not explicit:  # a plain int or one int per axis; dask's per-block tuples pass
        check_chunks(chunks, 1 if np.ndim(chunks) == 0 else len(chunks))
    src, meta = open_source(path, dataset=dataset, level=level)
    dims = tuple(meta["dims"])
    if chunks is not None and not explicit:
        chunks = check_chunks(chunks, len(dims))
    if isinstance(src, da.Array):
        arr = src if chunks is None else src.rechunk(chunks)
    else:
        arr = da.from_array(src, chunks=chunks or _default_chunks(src.shape, dims), asarray=False,
                            lock=False, meta=np.empty((0,) * src.ndim, src.dtype),
                            name=f"open-{Path(path).name}-{abs(hash((str(Path(path).resolve()), dataset)))}")
    if arr.ndim != len(dims):
        raise ShapeError(f"array is {arr.ndim}D but its axes are {dims}", path)
    vs = float(meta.get("voxel_size") or 1.0)
    origin = dict(zip("zyx", meta["origin"])) if meta.get("origin") is not None else {}
    scale = meta.get("scale") or [vs] * len(dims)
    trans = meta.get("translation") or [origin.get(d, 0.0) for d in dims]
    coords = {d: trans[i] + np.arange(n) * scale[i] if d in "zyx" else np.arange(n)  # NGFF per-axis transforms
              for i, (d, n) in enumerate(zip(dims, arr.shape))}
    attrs = {k: v for k, v in meta.get("attrs", {}).items()}
    attrs.update(voxel_size=vs, source=str(path), units="angstrom")
    if origin:
        attrs["origin"] = tuple(float(origin.get(d, 0.0)) for d in "zyx")
    if "nstart" in meta:
        attrs["mrc_nstart"] = tuple(int(v) for v in meta["nstart"])
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
    if isinstance(array, xr.DataArray):
        names = [str(d).lower() for d in array.dims]
        if len(set(names)) == len(names) and set(names) <= set(AXIS_ORDER):
            # files store z, y, x: a DataArray in another axis order is transposed, never written as is
            order = sorted(range(len(names)), key=lambda i: AXIS_ORDER.index(names[i]))
            array = array.transpose(*[array.dims[i] for i in order])
            array = array.rename({d: str(d).lower() for d in array.dims})
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
    """Write a volume (numpy, dask or xarray) to ``.mrc``, ``.em``, ``.h5`` or an OME-Zarr ``.zarr`` store.

    Dask input is written block by block and never gathered whole. Files are
    written under a temporary name and renamed; Zarr stores get their completion
    marker last.

    Parameters
    ----------
    array : array-like
        ``[z, y, x]`` (or ``[t, y, x]``/``[c, z, y, x]`` for Zarr, via xarray dims).
    voxel_size : float, optional
        Å per voxel, positive and finite (default: ``array.attrs["voxel_size"]`` or 1).
    levels : int
        Multiscale levels for Zarr output.
    chunks : int or tuple of int, optional
        Zarr storage chunks, positive integers.
    label : bool, optional
        A label map: Zarr downsamples it by striding rather than by the mean (default: integer
        dtype) and marks it NGFF ``image-label``; MRC gets :data:`LABEL_TAG` among its header labels,
        so :func:`check_tomogram` refuses it as a tomogram.

    Notes
    -----
    MRC keeps values exactly or refuses them: integer labels wider than 16 bits are
    stored as int16 or uint16 when they fit, and refused otherwise (never cast to
    float32); uint8 is stored as uint16 (mode 0 is signed in MRC2014). The origin
    (``attrs["origin"]``, ``z, y, x`` Å) and ``attrs["mrc_nstart"]`` go back into the header.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "out.mrc"
    >>> write_volume(np.zeros((4, 8, 8), np.float32), p, voxel_size=10.0).name
    'out.mrc'
    >>> write_volume(np.zeros((4, 8, 8), np.float32), p, voxel_size=0, overwrite=True)
    Traceback (most recent call last):
    ...
    tomochunk.errors.ValueProblem: voxel_size must be a positive, finite number of Å, got 0
    """
    path = Path(path)
    data, dims, vs, attrs = _as_dask(array)
    if voxel_size is not None:
        voxel_size = check_voxel_size(voxel_size)
    elif vs is not None:
        voxel_size = check_voxel_size(vs, "attrs['voxel_size']")
    else:
        voxel_size = 1.0
    if chunks is not None:
        chunks = check_chunks(chunks, data.ndim)
    if dims is None or len(dims) != data.ndim:
        raise ShapeError(f"cannot write a {data.ndim}D array as a volume (expected 3D)", path)
    suf = path.suffix.lower()
    if suf == ".zarr":
        label = data.dtype.kind in "iub" if label is None else label
        w = PyramidWriter(path, data.shape, data.dtype, dims=dims, voxel_size=voxel_size, levels=levels,
                          chunks=chunks, label=label, overwrite=overwrite, ngff=ngff,
                          attrs={k: v for k, v in attrs.items() if k in ("mrc_header",)}, name=path.stem,
                          inputs=[data], origin=attrs.get("origin"))  # refused if data reads from path
        stats = w.write(lambda region: data[region].compute())
        w.finish(stats=stats)
        return path
    if path.is_dir():
        raise ExistsError(f"output is a folder; {suf} output must be a file", path)
    if path.exists() and not overwrite:
        raise ExistsError("output exists; pass overwrite=True to replace it", path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a folder should be, no permission, ...
        raise ValueProblem(f"cannot create the output folder ({exc.strerror or exc})", path.parent) from None
    if data.ndim != 3:
        raise ShapeError(f"{suf} holds 3D volumes, got {data.ndim}D", path)
    blocks = [sl for _, sl in block_slices(data.chunks)]
    computed = _BlockReader(data)
    if suf in MRC_SUFFIXES:
        value_range = None
        if data.dtype.kind in "iu" and data.dtype.itemsize > 2:
            lo, hi = da.compute(data.min(), data.max()) if data.size else (0, 0)
            value_range = (int(lo), int(hi))
        write_mrc(computed, path, voxel_size=voxel_size, block_slices=blocks, value_range=value_range,
                  origin=attrs.get("origin"), nstart=attrs.get("mrc_nstart"),
                  labels=[LABEL_TAG] if label else None)
    elif suf in EM_SUFFIXES:
        value_range = None
        if data.dtype.kind in "iu" and data.dtype.itemsize >= 4:
            lo, hi = da.compute(data.min(), data.max()) if data.size else (0, 0)
            value_range = (int(lo), int(hi))
        em_dtype(data.dtype, value_range, path)  # refuse before anything is written
        write_em(computed, path, voxel_size=voxel_size, block_slices=blocks, value_range=value_range)
    elif suf in H5_SUFFIXES:
        write_h5(computed, path, voxel_size=voxel_size, dataset=dataset, block_slices=blocks)
    else:
        raise FormatError(f"cannot write {suf!r}; use .mrc, .em, .h5 or .zarr", path)
    return path


class _BlockReader:
    """``reader[slices]`` computes just that block of a dask array."""

    def __init__(self, data):
        self.data, self.shape, self.dtype = data, data.shape, data.dtype

    def __getitem__(self, key):
        return self.data[key].compute()
