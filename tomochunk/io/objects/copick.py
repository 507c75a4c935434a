"""copick picks JSON: one object type of one run, locations in Å."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from ..._geometry import euler_to_matrix, matrix_to_euler
from ...errors import FormatError, ValueProblem
from ._common import atomic, _ANGLES, _int_like_str, _isna, _read_text, _single, _warn_dropped, empty_objects


def read_json(p, *, classes=None, class_label=None, **kw):
    text = _read_text(p)
    if not text.strip():
        raise FormatError("empty file (expected copick picks JSON)", p)
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"malformed JSON: {e.msg}", p, line=e.lineno) from None
    if not isinstance(d, dict) or "points" not in d:
        raise FormatError("not a copick picks file (no 'points')", p)
    unit = d.get("unit", "angstrom")
    if unit != "angstrom":
        raise FormatError(f"unit {unit!r} is not supported (copick uses 'angstrom')", p)
    vs = kw.get("voxel_size") or d.get("voxel_spacing")
    if vs is None:
        raise FormatError("no voxel_spacing: pass voxel_size= to convert Å to voxels", p)
    vs = float(vs)
    name = d.get("pickable_object_name")
    label = class_label
    if label is None and classes and name is not None:
        inv = {v: k for k, v in classes.items()}
        label = inv.get(name)
    label = int(label) if label is not None else 1
    rows, mats = [], []
    for i, pt in enumerate(d.get("points") or []):
        try:
            loc = pt["location"]
            x, y, z = (float(loc[k]) / vs for k in ("x", "y", "z"))
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"point {i} has no numeric location x, y, z", p) from None
        row = {"x": x, "y": y, "z": z}
        if pt.get("score") is not None:
            row["score"] = float(pt["score"])
        if pt.get("instance_id") is not None:
            row["obj_id"] = int(pt["instance_id"])
        rows.append(row)
        t = pt.get("transformation_")
        mats.append(np.eye(4) if t is None else np.asarray(t, float))
    df = pd.DataFrame(rows) if rows else empty_objects()[["x", "y", "z"]]
    df.insert(0, "class_label", label)
    if d.get("run_name") is not None:
        df.insert(0, "tomo", d["run_name"] if not _int_like_str(d["run_name"]) else int(d["run_name"]))
    if mats and not all(np.array_equal(m[:3, :3], np.eye(3)) for m in mats):
        phi, psi, the = matrix_to_euler(np.stack([m[:3, :3] for m in mats]))
        df["phi"], df["psi"], df["the"] = phi, psi, the
    df.attrs["voxel_size"] = vs
    if name is not None:
        df.attrs["classes"] = {label: name}
    df.attrs["copick"] = {k: d.get(k) for k in ("user_id", "session_id") if d.get(k) is not None}
    return df


def write_json(df, p, *, user_id=None, session_id=None, voxel_size=None, pickable_object_name=None, **kw):
    _single(df, "tomo", p, "copick picks")
    _single(df, "class_label", p, "copick picks")
    vs = voxel_size if voxel_size is not None else df.attrs.get("voxel_size")
    if vs is None:
        raise ValueProblem(f"{os.fspath(p)}: copick stores Å; give voxel_size= or set df.attrs['voxel_size']")
    vs = float(vs)
    _warn_dropped(df, ("tomo", "class_label", "x", "y", "z", "phi", "psi", "the", "score", "obj_id"), p, "copick")
    meta = df.attrs.get("copick") or {}
    label = int(df["class_label"].iloc[0]) if len(df) else 1
    name = pickable_object_name or (df.attrs.get("classes") or {}).get(label) or f"class{label}"
    if "tomo" in df.columns and len(df):
        run = df["tomo"].iloc[0]
        run = int(run) if isinstance(run, (np.integer,)) else run
    else:
        run = kw.get("run_name")
    if all(a in df.columns for a in _ANGLES):
        mats = euler_to_matrix(df["phi"].to_numpy(), df["psi"].to_numpy(), df["the"].to_numpy())
    else:
        mats = np.broadcast_to(np.eye(3), (len(df), 3, 3))
    points = []
    for i in range(len(df)):
        r = df.iloc[i]
        t = np.eye(4)
        t[:3, :3] = mats[i]
        # Keys for absent columns are left out: copick's defaults (instance 0, score 1) apply.
        pt = {"location": {"x": float(r["x"]) * vs, "y": float(r["y"]) * vs, "z": float(r["z"]) * vs},
              "transformation_": t.tolist()}
        if "obj_id" in df.columns and not _isna(r["obj_id"]):
            pt["instance_id"] = int(r["obj_id"])
        if "score" in df.columns and not _isna(r["score"]):
            pt["score"] = float(r["score"])
        points.append(pt)
    doc = {"pickable_object_name": name,
           "user_id": user_id or meta.get("user_id") or "tomochunk",
           "session_id": session_id or meta.get("session_id") or "0",
           "run_name": run,
           "voxel_spacing": vs,
           "unit": "angstrom",
           "points": points}
    with atomic(p) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
