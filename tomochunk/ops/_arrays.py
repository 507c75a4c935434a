"""Small helpers shared by the map-to-objects operations."""

from __future__ import annotations

import dask.array as da
import numpy as np

from .._schema import COLUMNS, object_frame  # noqa: F401  (object_frame: re-exported, its home is _schema)
from ..errors import ShapeError

#: The object-list columns, as a list (kept for old callers; the schema is :data:`tomochunk._schema.COLUMNS`).
OBJECT_COLUMNS = list(COLUMNS)


def as_dask(arr, name: str = "array", chunks="auto"):
    """Return ``(dask_array, voxel_size or None)`` for a numpy, dask or xarray input.

    xarray DataArrays are unwrapped (their ``.data`` stays lazy); the voxel size
    is read from ``attrs["voxel_size"]`` or from the spacing of the ``x`` coordinate.
    """
    voxel_size = None
    if hasattr(arr, "dims") and hasattr(arr, "data") and hasattr(arr, "attrs"):
        voxel_size = arr.attrs.get("voxel_size")
        if voxel_size is None and "x" in getattr(arr, "coords", {}) and arr.sizes.get("x", 0) > 1:
            xs = np.asarray(arr.coords["x"].values[:2], dtype=float)
            voxel_size = float(xs[1] - xs[0])
        arr = arr.data
    if isinstance(arr, da.Array):
        return arr, _scalar_vs(voxel_size)
    if isinstance(arr, np.ndarray) or hasattr(arr, "__array__"):
        a = np.asarray(arr) if not hasattr(arr, "shape") else arr
        return da.from_array(a, chunks=chunks), _scalar_vs(voxel_size)
    raise ShapeError(f"{name}: expected a numpy, dask or xarray array, got {type(arr).__name__}")


def _scalar_vs(vs):
    if vs is None:
        return None
    v = np.ravel(np.asarray(vs, dtype=float))
    return float(v[-1]) if v.size else None
