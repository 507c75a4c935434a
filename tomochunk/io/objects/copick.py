"""copick picks JSON: one object type of one run, locations in Å.

A picks file holds ``pickable_object_name, user_id, session_id, run_name``
(a string), ``voxel_spacing``, ``unit: "angstrom"``, ``trust_orientation``
and ``points: [{location: {x, y, z}, transformation_, instance_id,
score}]``. ``transformation_`` maps object space to tomogram space: its
rotation is :func:`tomochunk._geometry.euler_to_matrix` and its
translation a shift in Å added to the location. In a copick project the
file lives at ``ExperimentRuns/<run>/Picks/<user>_<session>_<object>.json``;
:func:`write_copick` writes that layout, one file per object and run, and
the reader takes the run name, and the voxel spacing of the run's one
``VoxelSpacing<vs>`` folder, from the path when the file lacks them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..._geometry import copick_to_tom, tom_to_copick
from ..._names import inside, safe_name
from ..._schema import validate_objects
from ...errors import ExistsError, FormatError, MissingError, ValueProblem
from ._common import (_ANGLES, _isna, _read_text, _single, _warn_dropped, atomic, empty_objects,
                      log)

__all__ = ["read_json", "write_json", "write_copick", "copick_name", "picks_path"]


def copick_name(text, what="name") -> str:
    """A copick object, user or session name: :func:`safe_name` without underscores.

    copick splits ``<user>_<session>_<object>.json`` on ``_``, and its own
    ``sanitize_name`` turns underscores into dashes, as this does.

    Examples
    --------
    >>> copick_name("ribosome_80S"), copick_name("../x")
    ('ribosome-80S', 'x')
    """
    return safe_name(text, what).replace("_", "-")


def picks_path(root, run, user, session, obj) -> Path:
    """``<root>/ExperimentRuns/<run>/Picks/<user>_<session>_<object>.json``, never outside ``root``.

    Examples
    --------
    >>> picks_path("proj", "TS_01", "me", "1", "ribosome").as_posix()
    'proj/ExperimentRuns/TS_01/Picks/me_1_ribosome.json'
    """
    name = f"{copick_name(user, 'copick user')}_{copick_name(session, 'copick session')}_" \
           f"{copick_name(obj, 'copick object')}.json"
    rel = Path("ExperimentRuns") / safe_name(run, "copick run name") / "Picks" / name
    inside(rel, root)
    return Path(root) / rel


_VS = re.compile(r"VoxelSpacing(\d+(?:\.\d*)?)")


def _layout(p):
    """Run name, voxel spacing and (user, session, object) that a copick layout path implies."""
    path = Path(p).resolve()
    parts = path.parts
    run = vs = None
    if len(parts) >= 3 and parts[-2] == "Picks":
        run = parts[-3]
        # picks sit beside the run's VoxelSpacing<vs> folders: one of them names the spacing
        found = {m.group(1) for d in path.parent.parent.glob("VoxelSpacing*")
                 if d.is_dir() and (m := _VS.fullmatch(d.name))}
        if len(found) == 1:
            vs = float(found.pop())
    for part in parts:
        m = _VS.fullmatch(part)
        if m:
            vs = float(m.group(1))
    fields = Path(p).stem.split("_")
    names = tuple(fields) if len(fields) == 3 and run is not None else (None, None, None)
    return run, vs, names


def read_json(p, *, classes=None, class_label=None, voxel_size=None, **kw):
    text = _read_text(p)
    if not text.strip():
        raise FormatError("empty file (expected copick picks JSON)", p)
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        if e.pos >= len(text.rstrip()):
            raise FormatError(f"truncated JSON ({e.msg})", p, line=e.lineno) from None
        raise FormatError(f"malformed JSON: {e.msg}", p, line=e.lineno) from None
    if not isinstance(d, dict) or "points" not in d:
        raise FormatError("not a copick picks file (no 'points')", p)
    unit = d.get("unit", "angstrom")
    if unit != "angstrom":
        raise FormatError(f"unit {unit!r} is not supported (copick uses 'angstrom')", p)
    run_l, vs_l, (user_l, session_l, obj_l) = _layout(p)
    vs = voxel_size if voxel_size is not None else d.get("voxel_spacing")
    vs = vs if vs is not None else vs_l
    if vs is None:
        raise FormatError("no voxel_spacing: pass voxel_size= to convert Å to voxels", p)
    try:
        vs = float(vs)
    except (TypeError, ValueError):
        raise FormatError(f"voxel_spacing {vs!r} is not a number", p) from None
    if not (np.isfinite(vs) and vs > 0):
        raise FormatError(f"voxel_spacing {vs!r} must be a positive number", p)
    name = d.get("pickable_object_name") or obj_l
    label = class_label
    if label is None and classes and name is not None:
        label = {v: k for k, v in classes.items()}.get(name)
    label = int(label) if label is not None else 1
    rows, mats = [], []
    for i, pt in enumerate(d.get("points") or []):
        try:
            loc = pt["location"]
            xyz = np.array([float(loc[k]) for k in ("x", "y", "z")])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"point {i} has no numeric location x, y, z", p) from None
        t = pt.get("transformation_")
        try:
            t = np.eye(4) if t is None else np.asarray(t, float)
        except (TypeError, ValueError):
            t = None
        if t is None or t.shape != (4, 4):
            raise FormatError(f"point {i}: transformation_ is not a 4x4 matrix", p)
        xyz = (xyz + t[:3, 3]) / vs  # copick: the centre is location + the transformation's shift (Å)
        row = {"x": xyz[0], "y": xyz[1], "z": xyz[2]}
        if pt.get("score") is not None:
            row["score"] = float(pt["score"])
        if pt.get("instance_id") is not None:
            row["obj_id"] = int(pt["instance_id"])
        rows.append(row)
        mats.append(t)
    df = pd.DataFrame(rows) if rows else empty_objects()[["x", "y", "z"]]
    df.insert(0, "class_label", label)
    run = d.get("run_name") if d.get("run_name") is not None else run_l
    if run is not None:
        df.insert(0, "tomo", str(run))
    trusted = d.get("trust_orientation", True) is not False
    if mats and trusted and not all(np.allclose(m[:3, :3], np.eye(3), atol=0) for m in mats):
        phi, psi, the, _ = copick_to_tom(np.stack(mats))
        df["phi"], df["psi"], df["the"] = phi, psi, the
    df.attrs["voxel_size"] = vs
    if name is not None:
        df.attrs["classes"] = {label: name}
    meta = {"user_id": d.get("user_id") or user_l, "session_id": d.get("session_id") or session_l}
    df.attrs["copick"] = {k: v for k, v in meta.items() if v is not None}
    return df


def _points(df, vs):
    angles = all(a in df.columns for a in _ANGLES) and not df[list(_ANGLES)].isna().any(axis=None)
    mats = tom_to_copick(*(df[a].to_numpy(float) for a in _ANGLES)) if angles else \
        np.broadcast_to(np.eye(4), (len(df), 4, 4))
    xyz = df[["x", "y", "z"]].to_numpy(float) * vs
    points = []
    for i in range(len(df)):
        # Keys for absent columns are left out: copick's defaults (instance 0, score 1) apply.
        pt = {"location": {"x": float(xyz[i, 0]), "y": float(xyz[i, 1]), "z": float(xyz[i, 2])},
              "transformation_": np.asarray(mats[i]).tolist()}
        if "obj_id" in df.columns and not _isna(df["obj_id"].iloc[i]):
            pt["instance_id"] = int(df["obj_id"].iloc[i])
        if "score" in df.columns and not _isna(df["score"].iloc[i]):
            pt["score"] = float(df["score"].iloc[i])
        points.append(pt)
    return points, bool(angles)


def _voxel_size(df, voxel_size, p):
    vs = voxel_size if voxel_size is not None else df.attrs.get("voxel_size")
    if vs is None:
        raise ValueProblem(f"{os.fspath(p)}: copick stores Å; give voxel_size= or set df.attrs['voxel_size']")
    vs = float(vs)
    if not (np.isfinite(vs) and vs > 0):
        raise ValueProblem(f"{os.fspath(p)}: the voxel size must be a positive number, not {vs!r}")
    return vs


def write_json(df, p, *, user_id=None, session_id=None, voxel_size=None, pickable_object_name=None,
               run_name=None, **kw):
    _single(df, "tomo", p, "copick picks")
    _single(df, "class_label", p, "copick picks")
    vs = _voxel_size(df, voxel_size, p)
    _warn_dropped(df, ("tomo", "class_label", "x", "y", "z", "phi", "psi", "the", "score", "obj_id"), p, "copick")
    meta = df.attrs.get("copick") or {}
    label = int(df["class_label"].iloc[0]) if len(df) else 1
    name = pickable_object_name or (df.attrs.get("classes") or {}).get(label) or f"class{label}"
    run = run_name if run_name is not None else (df["tomo"].iloc[0] if "tomo" in df.columns and len(df) else None)
    points, angles = _points(df, vs)
    doc = {"pickable_object_name": str(name),
           "user_id": str(user_id or meta.get("user_id") or "tomochunk"),
           "session_id": str(session_id or meta.get("session_id") or "0"),
           "run_name": None if run is None else str(run),  # copick's schema: a string
           "voxel_spacing": vs,
           "unit": "angstrom",
           "trust_orientation": angles,
           "points": points}
    with atomic(p) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")


def write_copick(df, root, user, session, *, voxel_size=None, run_name=None, overwrite=True):
    """Write an object list into a copick project: one picks file per object and run.

    Parameters
    ----------
    df : pandas.DataFrame
        Object list; ``tomo`` gives the run names (or ``run_name=`` for a list
        without it), ``attrs["classes"]`` the pickable object names
        (``class<label>`` where unknown).
    root : path-like
        The project's overlay root (the folder holding ``ExperimentRuns``).
    user, session : str
        copick ``user_id`` and ``session_id`` (underscores become dashes, as
        copick's own ``sanitize_name`` does).
    voxel_size : float, optional
        Å per voxel; default ``df.attrs["voxel_size"]``.
    run_name : str, optional
        Run of a list without a ``tomo`` column.
    overwrite : bool
        If False, refuse to replace an existing picks file.

    Returns
    -------
    list of pathlib.Path
        ``<root>/ExperimentRuns/<run>/Picks/<user>_<session>_<object>.json``.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> df = pd.DataFrame({"tomo": ["TS_01", "TS_02"], "class_label": [1, 2], "x": [1.0, 2], "y": [1.0, 2],
    ...                    "z": [1.0, 2]})
    >>> df.attrs.update(voxel_size=10.0, classes={1: "ribosome", 2: "proteasome"})
    >>> [p.relative_to(root).as_posix() for p in write_copick(df, root, "me", "1")]
    ['ExperimentRuns/TS_01/Picks/me_1_ribosome.json', 'ExperimentRuns/TS_02/Picks/me_1_proteasome.json']
    """
    df = validate_objects(df)
    vs = _voxel_size(df, voxel_size, root)
    if "tomo" not in df.columns:
        if run_name is None:
            raise ValueProblem("write_copick: the list has no 'tomo' column; give run_name=")
        df = df.assign(tomo=str(run_name))
    classes = df.attrs.get("classes") or {}
    written, todo = [], []
    for (run, label), part in df.groupby(["tomo", "class_label"], sort=False):
        name = classes.get(int(label)) or f"class{int(label)}"
        p = picks_path(root, run, user, session, name)
        if p.exists() and not overwrite:  # checked for every file before any is written
            raise ExistsError("exists (pass overwrite=True to replace it)", p)
        todo.append((run, name, p, part))
    for run, name, p, part in todo:
        p.parent.mkdir(parents=True, exist_ok=True)
        # cluster sizes have no copick field: left out quietly (one warning per file would be noise)
        part = part.drop(columns=[c for c in ("size",) if c in part.columns]).reset_index(drop=True)
        part.attrs = {}
        write_json(part, p, user_id=copick_name(user, "copick user"), session_id=copick_name(session, "copick session"),
                   voxel_size=vs, pickable_object_name=copick_name(name, "copick object"), run_name=str(run))
        written.append(p)
    if not written and not Path(root).exists():
        raise MissingError("copick project folder does not exist", root)
    log.debug("wrote %d copick picks files under %s", len(written), root)
    return written
