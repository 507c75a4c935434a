"""The object-list schema: its columns, their types, and the one validation.

An object list is a :class:`pandas.DataFrame` with the columns (in this
order, where present) ``tomo, class_label, x, y, z, phi, psi, the, score,
size, obj_id``; ``x, y, z`` are in voxels of the volume the objects were
picked on, ``df.attrs["voxel_size"]`` is that voxel size in Å,
``df.attrs["classes"]`` maps class labels to names where known, and
``df.attrs["shape"]`` may hold the ``(z, y, x)`` shape of that volume.
:func:`validate_objects` is the one place that enforces this schema; every
reader, writer and operation goes through it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import FormatError, ValueProblem

__all__ = ["COLUMNS", "ANGLES", "validate_objects", "object_frame", "empty_objects"]

#: Schema columns, in order.
COLUMNS = ("tomo", "class_label", "x", "y", "z", "phi", "psi", "the", "score", "size", "obj_id")
#: The Euler angle columns (degrees, TOM/DeepFinder ZXZ, see :mod:`tomochunk._geometry`).
ANGLES = ("phi", "psi", "the")
_FLOAT = ("x", "y", "z", "phi", "psi", "the", "score")
_INT = ("size", "obj_id")
_ANGLES = ANGLES


def empty_objects(voxel_size=None):
    """An object list with no rows and the minimal schema columns.

    Examples
    --------
    >>> list(empty_objects(10.0).columns), empty_objects(10.0).attrs["voxel_size"]
    (['class_label', 'x', 'y', 'z'], 10.0)
    """
    df = pd.DataFrame({"class_label": pd.Series([], dtype="int64"),
                       "x": pd.Series([], dtype="float64"),
                       "y": pd.Series([], dtype="float64"),
                       "z": pd.Series([], dtype="float64")})
    if voxel_size is not None:
        df.attrs["voxel_size"] = float(voxel_size)
    return df


def _int_like_str(v) -> bool:
    try:
        return isinstance(v, str) and str(int(v)) == v
    except ValueError:
        return False


def _normalize_tomo(s: pd.Series) -> pd.Series:
    if s.isna().any():
        raise ValueProblem("object list has objects without a tomogram ('tomo' is empty)")
    if pd.api.types.is_bool_dtype(s):
        return s.astype("int64")
    if pd.api.types.is_integer_dtype(s):
        return s.astype("int64")
    if pd.api.types.is_float_dtype(s):
        if np.all(np.mod(s.to_numpy(), 1) == 0):
            return s.astype("int64")
        return s.astype(str)
    vals = s.tolist()
    if len(vals) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
        return s.astype("int64")
    return s.astype(str)


def validate_objects(df, *, voxel_size=None, classes=None, path=None):
    """Check an object list and normalise it to the tomochunk schema.

    Returns a new DataFrame with schema columns first, in schema order
    (``tomo, class_label, x, y, z, phi, psi, the, score, size, obj_id``),
    then any other columns in their original order; a fresh RangeIndex;
    ``class_label`` int64 (1 when absent); coordinates, angles and score
    float64; ``size`` and ``obj_id`` int64 (nullable ``Int64`` when some
    are missing); ``tomo`` int64 when all integers, else str.

    Parameters
    ----------
    df : pandas.DataFrame
        Must have ``x, y, z``.
    voxel_size : float, optional
        Sets ``attrs["voxel_size"]`` (overrides what ``df`` carries).
    classes : dict, optional
        ``{label: name}``; merged into ``attrs["classes"]``.
    path : path-like, optional
        Named in error messages (a :class:`FormatError` is raised then,
        else :class:`ValueProblem`).

    Examples
    --------
    >>> df = validate_objects(pd.DataFrame({"z": [1], "y": [2], "x": [3]}), voxel_size=10)
    >>> list(df.columns), df.attrs["voxel_size"]
    (['class_label', 'x', 'y', 'z'], 10.0)
    """
    def fail(msg):
        if path is not None:
            raise FormatError(msg, path)
        raise ValueProblem(msg)

    if not isinstance(df, pd.DataFrame):
        raise ValueProblem(f"an object list must be a pandas DataFrame, not {type(df).__name__}")
    attrs = dict(df.attrs)
    out = df.reset_index(drop=True).copy()
    missing = [c for c in ("x", "y", "z") if c not in out.columns]
    if missing:
        fail(f"object list has no column {', '.join(missing)}")
    present = [a for a in _ANGLES if a in out.columns]
    if 0 < len(present) < 3:
        fail(f"object list has angle column(s) {', '.join(present)} but not all of phi, psi, the")
    if "class_label" not in out.columns:
        out["class_label"] = 1
    for c in _FLOAT:
        if c in out.columns:
            try:
                out[c] = pd.to_numeric(out[c], errors="raise").astype("float64")
            except (ValueError, TypeError):
                fail(f"column {c!r} is not numeric")
    for c in ("x", "y", "z"):
        if out[c].isna().any():
            fail(f"column {c!r} has missing values (row {int(np.flatnonzero(out[c].isna())[0])})")
    for c in ("x", "y", "z") + _ANGLES:
        if c in out.columns:
            inf = np.isinf(out[c].to_numpy())
            if inf.any():
                fail(f"column {c!r} has an infinite value (row {int(np.flatnonzero(inf)[0])})")
    if present:
        na = out[list(_ANGLES)].isna()
        bad = na.any(axis=1) & ~na.all(axis=1)
        if bad.any():
            fail(f"object {int(np.flatnonzero(bad)[0])} has only some of the angles phi, psi, the")
    for c in ("class_label",) + _INT:
        if c not in out.columns:
            continue
        try:
            v = pd.to_numeric(out[c], errors="raise")
        except (ValueError, TypeError):
            fail(f"column {c!r} is not an integer")
        if c == "class_label" and v.isna().any():
            fail("column 'class_label' has missing values")
        vals = v.dropna().to_numpy(dtype=float)
        if np.any(np.mod(vals, 1) != 0):
            fail(f"column {c!r} is not an integer")
        out[c] = v.astype("Int64") if v.isna().any() else v.astype("int64")
    if (out["class_label"] < 1).any():
        fail("class_label must be >= 1 (0 is the background)")
    if "tomo" in out.columns:
        try:
            out["tomo"] = _normalize_tomo(out["tomo"])
        except ValueProblem as e:
            fail(str(e))
    order = [c for c in COLUMNS if c in out.columns] + [c for c in out.columns if c not in COLUMNS]
    out = out[order]
    out.attrs = attrs
    if voxel_size is not None:
        out.attrs["voxel_size"] = float(voxel_size)
    elif "voxel_size" in out.attrs and out.attrs["voxel_size"] is not None:
        out.attrs["voxel_size"] = float(out.attrs["voxel_size"])
    if classes:
        merged = dict(out.attrs.get("classes") or {})
        merged.update({int(k): str(v) for k, v in classes.items()})
        out.attrs["classes"] = merged
    return out


def object_frame(columns: dict, voxel_size=None, shape=None):
    """Build an object DataFrame in the schema's column order (extras after), without copying checks.

    The fast constructor for operations that build lists from arrays they
    computed themselves; :func:`validate_objects` is for lists from outside.
    ``shape`` (the ``(z, y, x)`` of the volume picked) becomes ``attrs["shape"]``, which
    RELION 5's centred-Å STAR coordinates need.

    Examples
    --------
    >>> df = object_frame({"z": [1], "y": [2], "x": [3], "class_label": [1]}, voxel_size=5, shape=(8, 9, 10))
    >>> list(df.columns), df.attrs["voxel_size"], df.attrs["shape"]
    (['class_label', 'x', 'y', 'z'], 5.0, (8, 9, 10))
    """
    df = pd.DataFrame(columns)
    order = [c for c in COLUMNS if c in df.columns]
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
    if shape is not None:
        df.attrs["shape"] = tuple(int(n) for n in shape)
    return df
