"""RELION STAR particle tables (through ``starfile``).

Written by default as RELION 5's ``relion_tomo_import_particles`` takes
them: one ``data_particles`` block with ``rlnTomoName``,
``rlnCenteredCoordinate{X,Y,Z}Angst`` (Å from the tomogram centre, so the
volume shape is needed: ``shape=`` or ``df.attrs["shape"]``),
``rlnAngleRot/Tilt/Psi`` (see :func:`tomochunk._geometry.tom_to_relion`),
``rlnClassNumber`` and ``rlnAutopickFigureOfMerit``; and
``rlnTomoTiltSeriesPixelSize`` when ``tilt_series_pixel_size=`` is given.
``coordinates="pixel"`` writes RELION 4's ``rlnCoordinate{X,Y,Z}`` instead,
in tilt-series pixels. A comment line ``# tomochunk voxel_size=... shape=...``
(RELION skips comments) lets the file be read back without arguments.
"""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pandas as pd

from ..._geometry import relion_to_tom, tom_to_relion
from ...errors import FormatError, ValueProblem
from ._common import _ANGLES, _check_complete, _int_like_str, _read_text, _rename_known, atomic, log

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


_HEADER = re.compile(r"^# tomochunk (.*)$", re.M)


def _own_header(text):
    """``(voxel_size, shape)`` from the comment line this module writes, or ``(None, None)``."""
    m = _HEADER.search(text)
    if not m:
        return None, None
    kv = dict(f.split("=", 1) for f in m.group(1).split() if "=" in f)
    try:
        vs = float(kv["voxel_size"]) if "voxel_size" in kv else None
        shape = tuple(int(v) for v in kv["shape"].split(",")) if "shape" in kv else None
    except ValueError:
        return None, None
    return vs, shape


def _numeric(df, cols, p, text, name):
    for c in cols:
        if c in df.columns:
            v = pd.to_numeric(df[c], errors="coerce")
            if v.isna().any():
                i = int(np.flatnonzero(v.isna())[0])
                raise FormatError(f"{c}={df[c].iloc[i]!r} is not a number", p, line=_star_line(text, name, i))
            df[c] = v


def read_star(p, *, shape=None, voxel_size=None, tilt_series_pixel_size=None, **kw):
    """Read a RELION 5 (centred Å) or RELION 4 (tilt-series pixel) particle table.

    RELION 4 coordinates are tilt-series pixels of ``rlnTomoTiltSeriesPixelSize``
    (from the particles or optics table, or ``tilt_series_pixel_size=``); they
    are converted to voxels of ``voxel_size`` when that is known, else the
    voxel size becomes the tilt-series pixel size.
    """
    import starfile

    text = _read_text(p)
    if not text.strip():
        raise FormatError("empty file (expected a STAR particle table)", p)
    _check_complete(text, p)
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
    own_vs, own_shape = _own_header(text)
    vs = voxel_size if voxel_size is not None else own_vs
    shape = shape if shape is not None else own_shape
    optics = tables.get("optics")
    # Old tomochunk files had an optics block of their own whose rlnImagePixelSize was the voxel size;
    # RELION's own rlnImagePixelSize is the subtomogram's, not the tomogram's.
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
        _numeric(df, ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"), p, text, name)
        ts = tilt_series_pixel_size
        if ts is None and "rlnTomoTiltSeriesPixelSize" in df.columns:
            ts = pd.to_numeric(df["rlnTomoTiltSeriesPixelSize"], errors="coerce").to_numpy(float)
        elif ts is None and optics is not None and "rlnTomoTiltSeriesPixelSize" in optics.columns:
            ts = pd.to_numeric(optics["rlnTomoTiltSeriesPixelSize"], errors="coerce").to_numpy(float)
            if len(ts) > 1 and "rlnOpticsGroup" in df.columns:  # per particle, through its optics group
                group = dict(zip(optics["rlnOpticsGroup"], ts))
                ts = df["rlnOpticsGroup"].map(group).to_numpy(float)
            else:
                ts = ts[:1]
        if ts is not None:
            ts = np.broadcast_to(np.asarray(ts, float), (len(df),)) if np.ndim(ts) else float(ts)
            if not np.all(np.isfinite(ts) & (np.asarray(ts) > 0)):
                raise FormatError("rlnTomoTiltSeriesPixelSize is not a positive number", p)
            if vs is None:
                uniq = np.unique(ts)
                if uniq.size > 1:
                    raise FormatError("particles have different tilt-series pixel sizes: pass voxel_size=", p)
                vs = float(uniq[0]) if uniq.size else None
            if vs is not None:
                for c in ("X", "Y", "Z"):
                    df[f"rlnCoordinate{c}"] = df[f"rlnCoordinate{c}"] * (np.asarray(ts) / float(vs))
            df = df.drop(columns=[c for c in ("rlnTomoTiltSeriesPixelSize",) if c in df.columns])
    elif all(c in cols for c in _STAR_CENTRED):
        if shape is None or vs is None:
            raise FormatError("centred-Å coordinates (rlnCenteredCoordinateX/Y/ZAngst) need shape=(z, y, x) "
                              "of the volume and voxel_size= (Å) to convert to voxels", p)
        if len(shape) != 3:
            raise ValueProblem(f"shape must be (z, y, x), got {shape!r}")
        _numeric(df, _STAR_CENTRED, p, text, name)
        nz, ny, nx = (float(s) for s in shape)
        vs = float(vs)
        for cc, n, col in zip(_STAR_CENTRED, (nx, ny, nz), ("x", "y", "z")):
            # RELION 5: centred Å = (voxel - size / 2) * voxel size
            df[col] = df[cc] / vs + n / 2.0
        df = df.drop(columns=list(_STAR_CENTRED) + [c for c in ("rlnTomoTiltSeriesPixelSize",) if c in df.columns])
    else:
        raise FormatError("no coordinate columns (rlnCoordinateX/Y/Z or rlnCenteredCoordinateX/Y/ZAngst)", p)
    ang = [c for c in _STAR_ANGLES if c in df.columns]
    if 0 < len(ang) < 3:
        raise FormatError(f"has {', '.join(ang)} but not all of rlnAngleRot, rlnAngleTilt, rlnAnglePsi", p,
                          line=_star_line(text, name))
    _numeric(df, _STAR_ANGLES, p, text, name)
    if ang:
        phi, psi, the = relion_to_tom(df["rlnAngleRot"], df["rlnAngleTilt"], df["rlnAnglePsi"])
        df = df.drop(columns=list(_STAR_ANGLES))
        df["phi"], df["psi"], df["the"] = phi, psi, the
    df = _rename_known(df, _STAR_MAP, p)
    if "tomo" in df.columns:
        df["tomo"] = [int(v) if _int_like_str(v) else v for v in df["tomo"]]
    if vs is not None:
        df.attrs["voxel_size"] = float(vs)
    if shape is not None:
        df.attrs["shape"] = tuple(int(s) for s in shape)
    return df


def write_star(df, p, *, coordinates=None, shape=None, voxel_size=None, tilt_series_pixel_size=None,
               tomo_name=None, **kw):
    """Write one RELION particles block: RELION 5 centred Å (default) or RELION 4 pixels.

    Parameters
    ----------
    coordinates : {"centered", "pixel"}, optional
        "centered" (default, also "relion5"): ``rlnCenteredCoordinate*Angst``,
        needs ``shape`` and the voxel size. "pixel" (also "relion4"):
        ``rlnCoordinate*`` in tilt-series pixels of ``tilt_series_pixel_size``
        (the voxel size when not given).
    shape : tuple, optional
        ``(z, y, x)`` of the volume; default ``df.attrs["shape"]``.
    voxel_size : float, optional
        Default ``df.attrs["voxel_size"]``.
    tilt_series_pixel_size : float, optional
        Written as ``rlnTomoTiltSeriesPixelSize``.
    tomo_name : str, optional
        ``rlnTomoName`` for a list without a ``tomo`` column.
    """
    import starfile

    mode = {None: "centered", "centered": "centered", "centred": "centered", "angstrom": "centered",
            "relion5": "centered", "pixel": "pixel", "relion4": "pixel"}.get(coordinates)
    if mode is None:
        raise ValueProblem(f"coordinates must be 'centered' (RELION 5) or 'pixel' (RELION 4), not {coordinates!r}")
    vs = voxel_size if voxel_size is not None else df.attrs.get("voxel_size")
    shape = shape if shape is not None else df.attrs.get("shape")
    ts = tilt_series_pixel_size
    for what, v in (("voxel size", vs), ("tilt-series pixel size", ts)):
        if v is not None and not (np.isfinite(float(v)) and float(v) > 0):
            raise ValueProblem(f"{os.fspath(p)}: the {what} must be a positive number, not {v!r}")
    out = pd.DataFrame(index=df.index)
    if "tomo" in df.columns:
        out["rlnTomoName"] = df["tomo"].astype(str)
    elif tomo_name is not None:
        out["rlnTomoName"] = str(tomo_name)
    elif len(df):
        log.warning("%s: no tomogram names (a 'tomo' column or tomo_name=); RELION needs rlnTomoName", p)
    if mode == "centered" and (shape is None or vs is None):
        if coordinates is not None:
            raise ValueProblem(f"{os.fspath(p)}: a RELION 5 STAR (centred Å) needs the volume shape (shape=(z, y, x) "
                               "or df.attrs['shape']) and the voxel size; or write coordinates='pixel' (RELION 4)")
        # Default without a shape: RELION 4 pixels, declared as pixels of the voxel size (never silently binned).
        log.warning("%s: no volume shape (shape= or df.attrs['shape']), so RELION 4 rlnCoordinate* were written "
                    "instead of RELION 5's centred Å", p)
        mode = "pixel"
    if mode == "centered":
        if len(shape) != 3:
            raise ValueProblem(f"shape must be (z, y, x), got {shape!r}")
        nz, ny, nx = (float(s) for s in shape)
        for c, n in (("x", nx), ("y", ny), ("z", nz)):
            out[f"rlnCenteredCoordinate{c.upper()}Angst"] = (df[c] - n / 2.0) * float(vs)
    else:
        if ts is None and vs is not None:
            ts = float(vs)  # coordinates stay voxels, declared as pixels of that size
        if ts is None:
            log.warning("%s: no voxel size; rlnCoordinate* are voxels of an unknown size", p)
        f = 1.0 if ts is None or vs is None else float(vs) / float(ts)
        for c in ("x", "y", "z"):
            out[f"rlnCoordinate{c.upper()}"] = df[c] * f
    if ts is not None:
        out["rlnTomoTiltSeriesPixelSize"] = float(ts)
    if all(a in df.columns for a in _ANGLES):
        out["rlnAngleRot"], out["rlnAngleTilt"], out["rlnAnglePsi"] = tom_to_relion(df["phi"], df["psi"], df["the"])
    inv = {v: k for k, v in _STAR_MAP.items() if k not in ("rlnTomoName", "rlnCoordinateX", "rlnCoordinateY",
                                                           "rlnCoordinateZ")}
    for c in df.columns:
        if c in ("tomo", "x", "y", "z") + _ANGLES:
            continue
        out[inv.get(c, str(c))] = df[c]
    header = []
    if vs is not None:
        header.append(f"voxel_size={float(vs)!r}")
    if shape is not None:
        header.append("shape=" + ",".join(str(int(s)) for s in shape))
    with atomic(p) as tmp:
        starfile.write({"particles": out}, tmp, float_format="%.17g")
        body = tmp.read_text(encoding="utf-8")
        lines = body.split("\n")
        if lines and lines[0].startswith("#"):
            lines = lines[1:]  # starfile's own time-stamped comment
        tmp.write_text("# tomochunk " + " ".join(header) + "\n" + "\n".join(lines), encoding="utf-8")
