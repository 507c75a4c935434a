"""Operations on object lists (pandas DataFrames in the tomochunk schema).

Every function returns a new, validated DataFrame (see
:func:`tomochunk._schema.validate_objects`) and keeps ``attrs``.
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from .._log import get_logger
from ..errors import ValueProblem
from .._schema import validate_objects

log = get_logger(__name__)

__all__ = ["select_classes", "remove_classes", "scale_coordinates", "filter_objects",
           "merge_objects", "split_by_tomogram", "nms_objects"]


def _labels(df, classes):
    """Class labels from ints and/or names (names via ``attrs["classes"]``)."""
    if isinstance(classes, (numbers.Integral, str)):
        classes = [classes]
    names = {v: k for k, v in (df.attrs.get("classes") or {}).items()}
    out = []
    for c in classes:
        if isinstance(c, str):
            if c not in names:
                raise ValueProblem(f"unknown class name {c!r}; known: {', '.join(map(str, names)) or 'none'}")
            out.append(int(names[c]))
        else:
            out.append(int(c))
    return out


def _finish(df, attrs):
    df = df.reset_index(drop=True)
    df.attrs = dict(attrs)
    return validate_objects(df)


def select_classes(df, classes):
    """Keep only objects of the given classes.

    Parameters
    ----------
    df : pandas.DataFrame
        Object list.
    classes : int, str or iterable
        Class labels, or class names listed in ``df.attrs["classes"]``.

    Examples
    --------
    >>> df = pd.DataFrame({"class_label": [1, 2, 3], "x": [0., 1, 2], "y": 0., "z": 0.})
    >>> select_classes(df, [1, 3])["class_label"].tolist()
    [1, 3]
    """
    df = validate_objects(df)
    return _finish(df[df["class_label"].isin(_labels(df, classes))], df.attrs)


def remove_classes(df, classes):
    """Drop objects of the given classes (labels or names).

    Examples
    --------
    >>> df = pd.DataFrame({"class_label": [1, 2, 3], "x": [0., 1, 2], "y": 0., "z": 0.})
    >>> remove_classes(df, 2)["class_label"].tolist()
    [1, 3]
    """
    df = validate_objects(df)
    return _finish(df[~df["class_label"].isin(_labels(df, classes))], df.attrs)


def scale_coordinates(df, factor):
    """Multiply coordinates by ``factor`` and divide the voxel size by it.

    Use ``factor=0.5`` to move picks made on an unbinned volume onto the
    2× binned one (the voxel size doubles), ``factor=2`` the other way.
    ``size`` (a voxel count of the original cluster) is left as it is.

    Parameters
    ----------
    df : pandas.DataFrame
    factor : float
        One factor for x, y and z (anisotropic scaling would leave no single
        voxel size).

    Examples
    --------
    >>> df = pd.DataFrame({"x": [10.], "y": [20.], "z": [30.]})
    >>> df.attrs["voxel_size"] = 5.0
    >>> out = scale_coordinates(df, 0.5)
    >>> out[["x", "y", "z"]].values.tolist(), out.attrs["voxel_size"]
    ([[5.0, 10.0, 15.0]], 10.0)
    """
    if not isinstance(factor, numbers.Real) or not np.isfinite(factor) or factor <= 0:
        raise ValueProblem(f"factor must be a positive number, not {factor!r}")
    df = validate_objects(df)
    out = df.copy()
    out[["x", "y", "z"]] = out[["x", "y", "z"]] * float(factor)
    out.attrs = dict(df.attrs)
    if out.attrs.get("voxel_size") is not None:
        out.attrs["voxel_size"] = float(out.attrs["voxel_size"]) / float(factor)
    return validate_objects(out)


def filter_objects(df, *, min_score=None, max_score=None, min_size=None, max_size=None):
    """Keep objects whose score and size lie within the given bounds (inclusive).

    Examples
    --------
    >>> df = pd.DataFrame({"x": [0., 1, 2], "y": 0., "z": 0., "score": [0.1, 0.5, 0.9]})
    >>> filter_objects(df, min_score=0.5)["score"].tolist()
    [0.5, 0.9]
    """
    df = validate_objects(df)
    keep = np.ones(len(df), bool)
    for col, lo, hi in (("score", min_score, max_score), ("size", min_size, max_size)):
        if lo is None and hi is None:
            continue
        if col not in df.columns:
            raise ValueProblem(f"cannot filter by {col}: the object list has no {col!r} column")
        v = df[col].astype("float64").to_numpy()
        if lo is not None:
            keep &= v >= lo
        if hi is not None:
            keep &= v <= hi
    return _finish(df[keep], df.attrs)


def merge_objects(*dfs):
    """Concatenate object lists.

    The voxel sizes must agree (lists without one take the others'), and so
    must class names given for the same label.

    Examples
    --------
    >>> a = pd.DataFrame({"x": [0.], "y": 0., "z": 0.})
    >>> b = pd.DataFrame({"x": [1.], "y": 0., "z": 0., "score": [0.5]})
    >>> merge_objects(a, b)["x"].tolist()
    [0.0, 1.0]
    """
    if len(dfs) == 1 and isinstance(dfs[0], (list, tuple)):
        dfs = tuple(dfs[0])
    if not dfs:
        raise ValueProblem("merge_objects needs at least one object list")
    dfs = [validate_objects(d) for d in dfs]
    sizes = {d.attrs["voxel_size"] for d in dfs if d.attrs.get("voxel_size") is not None}
    if len(sizes) > 1:
        raise ValueProblem(f"cannot merge object lists with different voxel sizes {sorted(sizes)}; "
                           "scale_coordinates first")
    classes = {}
    for d in dfs:
        for k, v in (d.attrs.get("classes") or {}).items():
            if classes.get(k, v) != v:
                raise ValueProblem(f"class {k} is {classes[k]!r} in one list and {v!r} in another")
            classes[k] = v
    nonempty = [d for d in dfs if len(d)] or dfs[:1]
    out = pd.concat(nonempty, ignore_index=True)
    out.attrs = {}
    if sizes:
        out.attrs["voxel_size"] = sizes.pop()
    if classes:
        out.attrs["classes"] = classes
    return validate_objects(out)


def split_by_tomogram(df):
    """Split an object list into ``{tomo: DataFrame}``.

    A list without a ``tomo`` column is returned as ``{None: df}``.

    Examples
    --------
    >>> df = pd.DataFrame({"tomo": ["a", "b", "a"], "x": [0., 1, 2], "y": 0., "z": 0.})
    >>> {k: len(v) for k, v in split_by_tomogram(df).items()}
    {'a': 2, 'b': 1}
    """
    df = validate_objects(df)
    if "tomo" not in df.columns:
        return {None: df}
    return {k: _finish(g, df.attrs) for k, g in df.groupby("tomo", sort=False)}


def _order(df):
    """Processing order for NMS: best first (score, else size, else file order)."""
    for col in ("score", "size"):
        if col in df.columns:
            v = df[col].astype("float64").fillna(-np.inf).to_numpy()
            return np.argsort(-v, kind="stable")
    return np.arange(len(df))


def nms_objects(df, min_dist, *, by_class=True):
    """Non-maximum suppression: drop objects closer than ``min_dist`` to a better one.

    Objects are visited from the highest ``score`` (or ``size`` when there is
    no score, or else in list order); each kept object suppresses every
    unvisited object strictly closer than ``min_dist`` voxels. Objects of
    different tomograms never interact, nor (with ``by_class=True``) objects
    of different classes.

    Parameters
    ----------
    df : pandas.DataFrame
    min_dist : float
        Minimum distance between kept objects, in voxels.
    by_class : bool
        Suppress only within a class.

    Returns
    -------
    pandas.DataFrame
        The kept objects, in their original order.

    Examples
    --------
    >>> df = pd.DataFrame({"x": [0., 1, 10], "y": 0., "z": 0., "score": [0.5, 0.9, 0.1]})
    >>> nms_objects(df, 3)["x"].tolist()
    [1.0, 10.0]
    """
    if not np.isfinite(min_dist) or min_dist < 0:
        raise ValueProblem(f"min_dist must be a non-negative number, not {min_dist!r}")
    df = validate_objects(df)
    keys = [c for c in (("tomo", "class_label") if by_class else ("tomo",)) if c in df.columns]
    groups = [np.arange(len(df))] if not keys else [np.asarray(ix) for ix in df.groupby(keys, sort=False).indices.values()]
    keep = np.zeros(len(df), bool)
    # query_ball_point includes the radius itself; min_dist apart is allowed, so shrink it by one ulp.
    r = np.nextafter(float(min_dist), 0.0) if min_dist > 0 else 0.0
    for ix in groups:
        sub = df.iloc[ix]
        pts = sub[["x", "y", "z"]].to_numpy(float)
        if min_dist == 0 or len(ix) == 1:
            keep[ix] = True
            continue
        tree = cKDTree(pts)
        nbrs = tree.query_ball_point(pts, r)
        gone = np.zeros(len(ix), bool)
        for i in _order(sub):
            if gone[i]:
                continue
            keep[ix[i]] = True
            gone[nbrs[i]] = True
    log.debug("nms_objects kept %d of %d objects", int(keep.sum()), len(df))
    return _finish(df[keep], df.attrs)
