"""IMOD models (``.mod``, through ``imodmodel``): scattered points, one IMOD object per class.

IMOD object ``i`` (0-based) is ``class_label`` ``i + 1``, and its name is
the class name. Points are read from every contour, as ``x, y, z`` in
pixels of the model's image with no shift (the coordinates IMOD's
``model2point`` prints, which cet_pick and others take as voxel indices).
The model header's pixel size (``units`` Å or nm) carries the voxel size,
and ``xmax, ymax, zmax`` the volume shape where known.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...errors import FormatError, ValueProblem
from ._common import _warn_dropped, atomic, empty_objects

__all__ = ["read_mod", "write_mod"]

#: IMOD's header ``units`` codes -> Å per unit.
_UNITS = {-10: 1.0, -9: 10.0, -6: 1e4}


def read_mod(p, *, voxel_size=None, **kw):
    import imodmodel

    if p.stat().st_size == 0:
        raise FormatError("empty file (expected an IMOD model)", p)
    try:
        model = imodmodel.ImodModel.from_file(p)
    except Exception as e:  # imodmodel raises plain exceptions (struct, pydantic) on garbage
        raise FormatError(f"not a readable IMOD model ({type(e).__name__}: {e})", p) from None
    rows, classes = [], {}
    for i, obj in enumerate(model.objects):
        name = (obj.header.name or "").strip()
        if name:
            classes[i + 1] = name
        for c in obj.contours:
            pts = np.asarray(c.points, float).reshape(-1, 3)
            rows.append(pd.DataFrame({"class_label": i + 1, "x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2]}))
    df = pd.concat(rows, ignore_index=True) if rows else empty_objects()
    h = model.header
    if voxel_size is None and h.units in _UNITS and h.pixelsize > 0:
        df.attrs["voxel_size"] = float(h.pixelsize) * _UNITS[h.units]
    if h.xmax and h.ymax and h.zmax:
        df.attrs["shape"] = (int(h.zmax), int(h.ymax), int(h.xmax))
    if classes:
        df.attrs["classes"] = classes
    return df


def write_mod(df, p, *, voxel_size=None, shape=None, **kw):
    import imodmodel

    _warn_dropped(df, ("tomo", "class_label", "x", "y", "z"), p, "IMOD model")
    if "tomo" in df.columns and df["tomo"].nunique() > 1:
        raise ValueProblem(f"{p}: an IMOD model holds one tomogram, this list has {df['tomo'].nunique()}; "
                           "split it first (split_by_tomogram)")
    labels = sorted(int(v) for v in df["class_label"].unique()) if len(df) else []
    # One IMOD object per class from 1 to the largest label, so object i is always class i + 1.
    top = max(labels, default=0)
    pts = pd.DataFrame({"object_id": df["class_label"].to_numpy() - 1, "contour_id": 0,
                        "x": df["x"].to_numpy(float), "y": df["y"].to_numpy(float), "z": df["z"].to_numpy(float)})
    model = imodmodel.ImodModel.from_dataframe(pts) if len(pts) else imodmodel.ImodModel()
    present = {int(o) for o in pts["object_id"].unique()}
    objects = {int(o): obj for o, obj in zip(sorted(present), model.objects)}
    classes = df.attrs.get("classes") or {}
    full = []
    for i in range(top):
        obj = objects.get(i)
        if obj is None:
            obj = imodmodel.models.Object()
            obj.header.flags.scattered = True
            obj.update_sizes()
        obj.header.name = str(classes.get(i + 1, f"class{i + 1}"))[:63]
        full.append(obj)
    model.objects = full
    vs = voxel_size if voxel_size is not None else df.attrs.get("voxel_size")
    if vs is not None:
        model.header.pixelsize = float(vs)
        model.header.units = -10  # Å
    shape = shape if shape is not None else df.attrs.get("shape")
    if shape is not None:
        model.header.zmax, model.header.ymax, model.header.xmax = (int(s) for s in shape)
    model.update_sizes()
    with atomic(p) as tmp:
        model.to_file(tmp)
