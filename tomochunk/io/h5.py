"""HDF5 volumes (DeepFinder stores tomograms in a dataset named ``dataset``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import FormatError, ShapeError
from ._source import Source, parse_voxel_size, slabs

H5_SUFFIXES = (".h5", ".hdf5", ".hdf")
DEFAULT_DATASET = "dataset"


class H5Source(Source):
    def __init__(self, path, name, shape, dtype):
        self.path, self.name = str(path), name
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)

    def read(self, key):
        import h5py

        with h5py.File(self.path, "r") as f:
            return f[self.name][key]


def _datasets(f):
    import h5py

    found = []
    f.visititems(lambda name, obj: found.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
    return found


def read_h5(path, dataset=None):
    """Open one dataset of an HDF5 file lazily.

    The dataset is ``dataset`` when given, else the one named ``dataset``
    (DeepFinder), else the single 3D dataset of the file. The voxel size comes from a
    ``voxel_size`` attribute of the dataset, else of the file (a number in Å, or text
    with a unit such as ``"10 A"`` or ``"1 nm"``), else 1.

    Examples
    --------
    >>> import h5py, tempfile
    >>> p = Path(tempfile.mkdtemp()) / "t.h5"
    >>> with h5py.File(p, "w") as f:
    ...     f["dataset"] = np.zeros((2, 3, 4), np.float32); f["dataset"].attrs["voxel_size"] = "10 A"
    >>> src, meta = read_h5(p)
    >>> src.shape, meta["voxel_size"]
    ((2, 3, 4), 10.0)
    """
    import h5py

    path = Path(path)
    if path.stat().st_size == 0:
        raise FormatError("empty file", path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise FormatError(f"not a readable HDF5 file ({exc})", path) from None
    with f:
        if dataset is None:
            all3d = [n for n, d in _datasets(f) if d.ndim == 3]
            if DEFAULT_DATASET in f:
                dataset = DEFAULT_DATASET
            elif len(all3d) == 1:
                dataset = all3d[0]
            elif not all3d:
                raise ShapeError("no 3D dataset in the file", path)
            else:
                raise FormatError(f"several 3D datasets ({', '.join(all3d)}); choose one with dataset=", path)
        if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
            raise FormatError(f"no dataset named {dataset!r}", path)
        d = f[dataset]
        if d.ndim != 3:
            raise ShapeError(f"dataset {dataset!r} is {d.ndim}D {d.shape}, expected a 3D volume", path)
        # a dataset attribute wins over a file attribute; text with a unit ("10 A") is parsed
        vs = parse_voxel_size(d.attrs.get("voxel_size", f.attrs.get("voxel_size")), path)
        meta = {"voxel_size": vs or 1.0, "dims": ("z", "y", "x"), "dataset": dataset}
        return H5Source(path, dataset, d.shape, d.dtype), meta


def write_h5(array, path, *, voxel_size=None, dataset=DEFAULT_DATASET, block_slices=None) -> None:
    """Write a 3D array to ``dataset`` of an HDF5 file, block by block, through a temporary name."""
    import h5py

    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    with h5py.File(tmp, "w") as f:
        chunks = tuple(min(64, s) for s in array.shape) if all(array.shape) else None
        d = f.create_dataset(dataset, shape=array.shape, dtype=array.dtype, chunks=chunks)
        for sl in (block_slices or slabs(array.shape)):
            d[sl] = np.asarray(array[sl])
        if voxel_size:
            d.attrs["voxel_size"] = float(voxel_size)
    os.replace(tmp, path)
