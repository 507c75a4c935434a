"""RELION STAR particle tables (through ``starfile``)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd

from ..._geometry import relion_to_tom, tom_to_relion
from ...errors import FormatError, ValueProblem
from ._common import atomic, _ANGLES, _int_like_str, _read_text, _rename_known, log


_STAR_MAP = {"rlnTomoName": "tomo", "rlnClassNumber": "class_label",
             "rlnCoordinateX": "x", "rlnCoordinateY": "y", "rlnCoordinateZ": "z",
             "rlnAutopickFigureOfMerit": "score",
             "tomochunkSize": "size", "tomochunkObjId": "obj_id"}


_STAR_CENTRED = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")


_STAR_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def _star_line(text, block, row=None):
    """1-based file line of ``data_<block>`` (row None) or of its data row ``row`` (0-based)."""
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip() == f"data_{block}"), None)
    if start is None or row is None:
        return None if start is None else start + 1
    n = -1
    for i in range(start + 1, len(lines)):
        t = lines[i].strip()
        if t.startswith("data_"):
            break
        if not t or t.startswith("#"):
            continue
        if t == "loop_" or t.startswith("_"):
            continue
        n += 1
        if n == row:
            return i + 1
    return None


def read_star(p, *, shape=None, voxel_size=None, **kw):
    import starfile

    text = _read_text(p)
    if not text.strip():
        raise FormatError("empty file (expected a STAR particle table)", p)
    try:
        blocks = starfile.read(p, always_dict=True)
    except Exception as e:  # starfile raises plain exceptions on garbage
        raise FormatError(f"not a readable STAR file ({type(e).__name__}: {e})", p) from None
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    name = "particles" if "particles" in tables else None
    if name is None:
        for k, v in tables.items():
            if any(c in v.columns for c in ("rlnCoordinateX",) + _STAR_CENTRED):
                name = k
                break
    if name is None:
        raise FormatError("no table with rlnCoordinateX/Y/Z or rlnCenteredCoordinateX/Y/ZAngst columns", p)
    df = tables[name].copy()
    cols = set(df.columns)
    vs = voxel_size
    optics = tables.get("optics")
    # Only the optics block this module writes says what the voxel size of the
    # coordinates is; RELION's own rlnImagePixelSize is the subtomogram's.
    own = optics is not None and len(optics) == 1 and set(optics.columns) == {"rlnOpticsGroup", "rlnImagePixelSize"}
    if own:
        if vs is None:
            vs = float(optics["rlnImagePixelSize"].iloc[0])
        if "rlnOpticsGroup" in cols:
            df = df.drop(columns="rlnOpticsGroup")
    if any(c in cols for c in ("rlnOriginXAngst", "rlnOriginX")):
        msg = f"{os.fspath(p)}: origin shifts (rlnOrigin*) are kept as columns, not applied to the coordinates"
        log.warning(msg)
        warnings.warn(msg, stacklevel=3)
    if "rlnAutopickFigureOfMerit" not in cols and "rlnLCCmax" in cols:
        df = df.rename(columns={"rlnLCCmax": "rlnAutopickFigureOfMerit"})  # pytom-match-pick's score
    if all(c in cols for c in ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")):
        pass
    elif all(c in cols for c in _STAR_CENTRED):
        if shape is None or voxel_size is None:
            raise FormatError("centred-Å coordinates (rlnCenteredCoordinateX/Y/ZAngst) need shape=(z, y, x) "
                              "of the volume and voxel_size= (Å) to convert to voxels", p)
        if len(shape) != 3:
            raise ValueProblem(f"shape must be (z, y, x), got {shape!r}")
        nz, ny, nx = (float(s) for s in shape)
        vs = float(voxel_size)
        for cc, n, col in zip(_STAR_CENTRED, (nx, ny, nz), ("x", "y", "z")):
            v = pd.to_numeric(df[cc], errors="coerce")
            if v.isna().any():
                i = int(np.flatnonzero(v.isna())[0])
                raise FormatError(f"{cc}={df[cc].iloc[i]!r} is not a number", p, line=_star_line(text, name, i))
            # RELION 5: centred Å = (voxel - size / 2) * voxel size
            df[col] = v / vs + n / 2.0
        df = df.drop(columns=list(_STAR_CENTRED))
    else:
        raise FormatError("no coordinate columns (rlnCoordinateX/Y/Z or rlnCenteredCoordinateX/Y/ZAngst)", p)
    ang = [c for c in _STAR_ANGLES if c in df.columns]
    if 0 < len(ang) < 3:
        raise FormatError(f"has {', '.join(ang)} but not all of rlnAngleRot, rlnAngleTilt, rlnAnglePsi", p,
                          line=_star_line(text, name))
    for c in ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ") + _STAR_ANGLES:
        if c in df.columns:
            v = pd.to_numeric(df[c], errors="coerce")
            if v.isna().any():
                i = int(np.flatnonzero(v.isna())[0])
                raise FormatError(f"{c}={df[c].iloc[i]!r} is not a number", p, line=_star_line(text, name, i))
            df[c] = v
    if ang:
        phi, psi, the = relion_to_tom(df["rlnAngleRot"], df["rlnAngleTilt"], df["rlnAnglePsi"])
        df = df.drop(columns=list(_STAR_ANGLES))
        df["phi"], df["psi"], df["the"] = phi, psi, the
    df = _rename_known(df, _STAR_MAP, p)
    if "tomo" in df.columns:
        df["tomo"] = [int(v) if _int_like_str(v) else v for v in df["tomo"]]
    if vs is not None:
        df.attrs["voxel_size"] = float(vs)
    return df


def write_star(df, p, *, coordinates="pixel", shape=None, voxel_size=None, **kw):
    import starfile

    vs = voxel_size if voxel_size is not None else df.attrs.get("voxel_size")
    out = pd.DataFrame(index=df.index)
    inv = {v: k for k, v in _STAR_MAP.items()}
    if coordinates in ("centered", "centred", "angstrom"):
        if shape is None or vs is None:
            raise ValueProblem(f"{os.fspath(p)}: centred-Å STAR needs shape=(z, y, x) and a voxel size "
                               "(voxel_size= or df.attrs['voxel_size'])")
        nz, ny, nx = (float(s) for s in shape)
    elif coordinates != "pixel":
        raise ValueProblem(f"coordinates must be 'pixel' or 'centered', not {coordinates!r}")
    for c in df.columns:
        if c in ("x", "y", "z") and coordinates != "pixel":
            n = {"x": nx, "y": ny, "z": nz}[c]
            out[f"rlnCenteredCoordinate{c.upper()}Angst"] = (df[c] - n / 2.0) * float(vs)
        elif c in _ANGLES:
            if c == "phi":
                rot, tilt, psi = tom_to_relion(df["phi"], df["psi"], df["the"])
                out["rlnAngleRot"], out["rlnAngleTilt"], out["rlnAnglePsi"] = rot, tilt, psi
        elif c in inv:
            out[inv[c]] = df[c]
        else:
            out[str(c)] = df[c]
    data = out
    if vs is not None and coordinates == "pixel":
        data = {"optics": pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [float(vs)]}),
                "particles": out.assign(rlnOpticsGroup=1)}
    else:
        data = {"particles": out}
    with atomic(p) as tmp:
        starfile.write(data, tmp, float_format="%.17g")
