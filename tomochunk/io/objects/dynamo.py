"""Dynamo tables (``.tbl``, through ``dynamotable``).

A table row holds ``tag`` (``obj_id``), shifts ``dx, dy, dz`` (pixels,
added to the position), ``tdrot, tilt, narot`` (Dynamo's passive ZXZ
angles, converted by :func:`tomochunk._geometry.tom_to_dynamo`), ``cc``
(``score``), ``tomo`` (an integer index), ``class`` (``class_label``),
``x, y, z`` (pixels, the same corner origin as ours, as copick converts them)
and ``apix`` (the voxel size). Tomogram names go in the table map beside
it, ``<table>.doc`` (``index name`` lines), as Dynamo and ``dynamotable``
keep them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..._geometry import dynamo_to_tom, tom_to_dynamo
from ..._names import tomo_name
from ...errors import FormatError
from ._common import _ANGLES, _check_complete, _read_text, _warn_dropped, atomic, empty_objects, log

__all__ = ["read_tbl", "write_tbl", "table_map_path"]


def table_map_path(path):
    """The Dynamo table map beside a table: ``picks.tbl`` -> ``picks.doc``.

    Examples
    --------
    >>> table_map_path("out/picks.tbl").name
    'picks.doc'
    """
    return Path(path).with_suffix(".doc")


def read_tbl(p, *, voxel_size=None, **kw):
    import dynamotable

    text = _read_text(p)
    if not text.strip():
        return empty_objects(voxel_size)
    _check_complete(text, p)
    doc = table_map_path(p)
    try:
        t = dynamotable.read(str(p), str(doc) if doc.exists() else None)
    except Exception as e:  # dynamotable (pandas) raises plain exceptions on garbage
        raise FormatError(f"not a readable Dynamo table ({type(e).__name__}: {e})", p) from None
    need = ("x", "y", "z", "dx", "dy", "dz", "tdrot", "tilt", "narot")
    if any(c not in t.columns for c in need) or not all(pd.api.types.is_numeric_dtype(t[c]) for c in need):
        raise FormatError("not a Dynamo table (needs 26 numeric columns up to x, y, z)", p)
    df = pd.DataFrame({"x": t["x"] + t["dx"], "y": t["y"] + t["dy"], "z": t["z"] + t["dz"]})
    df["phi"], df["psi"], df["the"] = dynamo_to_tom(t["tdrot"], t["tilt"], t["narot"])
    df.insert(0, "class_label", t["class"].astype("int64").clip(lower=1) if "class" in t else 1)
    if "tomo_file" in t.columns:
        df.insert(0, "tomo", [tomo_name(str(f)) for f in t["tomo_file"]])
    elif "tomo" in t.columns:
        df.insert(0, "tomo", t["tomo"].astype("int64"))
    df["score"] = t["cc"].astype(float)
    df["obj_id"] = t["tag"].astype("int64")
    apix = t["apix"].to_numpy(float) if "apix" in t.columns else np.zeros(len(t))
    if voxel_size is None and len(apix) and np.all(apix == apix[0]) and apix[0] > 0:
        df.attrs["voxel_size"] = float(apix[0])
    if "class" in t.columns and (t["class"] < 1).any():
        log.info("%s: Dynamo class 0 read as class_label 1", p)
    return df


def write_tbl(df, p, *, voxel_size=None, **kw):
    import dynamotable

    _warn_dropped(df, ("tomo", "class_label", "x", "y", "z", "phi", "psi", "the", "score", "obj_id"), p, "Dynamo")
    n = len(df)
    t = {"tag": df["obj_id"].to_numpy() if "obj_id" in df.columns else np.arange(1, n + 1),
         "aligned_value": np.ones(n, dtype=int), "averaged_value": np.ones(n, dtype=int),
         "dx": np.zeros(n), "dy": np.zeros(n), "dz": np.zeros(n)}
    if all(a in df.columns for a in _ANGLES):
        tdrot, tilt, narot = tom_to_dynamo(*(df[a].fillna(0).to_numpy(float) for a in _ANGLES))
    else:
        tdrot = tilt = narot = np.zeros(n)
    t.update(tdrot=tdrot, tilt=tilt, narot=narot)
    t["cc"] = df["score"].fillna(0).to_numpy(float) if "score" in df.columns else np.zeros(n)
    names = None
    if "tomo" in df.columns and not pd.api.types.is_integer_dtype(df["tomo"]):
        names = list(dict.fromkeys(df["tomo"]))
        t["tomo"] = df["tomo"].map({nm: i + 1 for i, nm in enumerate(names)}).to_numpy()  # Dynamo counts from 1
    elif "tomo" in df.columns:
        t["tomo"] = df["tomo"].to_numpy()
    else:
        t["tomo"] = np.ones(n, dtype=int)
    t["class"] = df["class_label"].to_numpy()
    t["x"], t["y"], t["z"] = (df[c].to_numpy(float) for c in ("x", "y", "z"))
    vs = voxel_size if voxel_size is not None else df.attrs.get("voxel_size")
    t["apix"] = np.full(n, float(vs) if vs is not None else 0.0)
    doc = table_map_path(p)
    if names is not None:
        with atomic(doc) as tmp:
            tmp.write_text("".join(f"{i + 1} {nm}\n" for i, nm in enumerate(names)), encoding="utf-8")
    elif doc.exists():
        doc.unlink()  # a stale map would rename this table's tomograms
    with atomic(p) as tmp:
        # dynamotable writes every column in Dynamo's order and fills the rest with zeros
        dynamotable.write(pd.DataFrame(t), str(tmp))
