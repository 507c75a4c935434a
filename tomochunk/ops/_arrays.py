"""Small helpers shared by the map-to-objects operations."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError

OBJECT_COLUMNS = ["tomo", "class_label", "x", "y", "z", "phi", "psi", "the", "score", "size", "obj_id"]


def as_dask(arr, name: str = "array", chunks="auto"):
    """Return ``(dask_array, voxel_size or None)`` for a numpy, dask or xarray input.

    xarray DataArrays are unwrapped (their ``.data`` stays lazy); the voxel size
    is read from ``attrs["voxel_size"]`` or from the spacing of the ``x`` coordinate.
    """
    import dask.array as da

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


def object_frame(columns: dict, voxel_size=None):
    """Build an object DataFrame with the CONVENTIONS.md column order (extras after)."""
    import pandas as pd

    df = pd.DataFrame(columns)
    order = [c for c in OBJECT_COLUMNS if c in df.columns]
    order += [c for c in df.columns if c not in order]
    df = df[order].reset_index(drop=True)
    for c in ("x", "y", "z", "score"):
        if c in df.columns:
            df[c] = df[c].astype(float)
    for c in ("class_label", "size", "obj_id"):
        if c in df.columns:
            df[c] = df[c].astype(np.int64)
    if voxel_size is not None:
        df.attrs["voxel_size"] = float(voxel_size)
    return df
