"""Read and write particle object lists in the community formats.

An object list is a :class:`pandas.DataFrame` with the columns (in this
order, where present) ``tomo, class_label, x, y, z, phi, psi, the, score,
size, obj_id``; ``x, y, z`` are in voxels of the volume the objects were
picked on, ``df.attrs["voxel_size"]`` is that voxel size in Å and
``df.attrs["classes"]`` maps class labels to names where known.
:func:`validate_objects` is the one place that enforces this schema; every
reader and every operation goes through it.

Formats (chosen by extension, or by ``format=``):

========  ===========  ==========================================================
format    extension    content
========  ===========  ==========================================================
xml       .xml         DeepFinder ``<objlist><object class_label= x= .../>``
csv       .csv         ExoDeepFinder ``tomo_idx,class_label,x,y,z[,obj_id,...]``
star      .star        RELION 5 (pixel or centred-Å coordinates, via starfile)
tsv       .tsv         Ais: integer ``x<TAB>y<TAB>z``, no header
json      .json        copick picks (locations in Å)
txt       .txt         cet_pick ``x y z [score]``, one file per tomogram
xlsx      .xlsx        DeepFinder Excel sheet (columns A-J as DeepFinder writes)
========  ===========  ==========================================================

Euler angles ``phi, psi, the`` follow DeepFinder (TOM/PyTOM ZXZ).  The one
rotation this package applies to them is :func:`euler_to_matrix`; the STAR
conversion (:func:`tom_to_relion`) is derived from it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .._log import get_logger
from ..errors import FormatError, MissingError, ValueProblem

log = get_logger(__name__)

__all__ = ["read_objects", "write_objects", "empty_objects", "validate_objects",
           "COLUMNS", "FORMATS", "euler_to_matrix", "matrix_to_euler",
           "tom_to_relion", "relion_to_tom"]

#: Schema columns, in order.
COLUMNS = ("tomo", "class_label", "x", "y", "z", "phi", "psi", "the", "score", "size", "obj_id")
_FLOAT = ("x", "y", "z", "phi", "psi", "the", "score")
_INT = ("size", "obj_id")
_ANGLES = ("phi", "psi", "the")

FORMATS = {".xml": "xml", ".csv": "csv", ".star": "star", ".tsv": "tsv",
           ".json": "json", ".txt": "txt", ".xlsx": "xlsx"}


# --------------------------------------------------------------------------- rotation
def euler_to_matrix(phi, psi, the):
    """Rotation matrix for DeepFinder (TOM/PyTOM ZXZ) Euler angles in degrees.

    The one rotation convention used everywhere in tomochunk:
    ``R = Rz(psi) @ Rx(the) @ Rz(phi)`` acting on column vectors
    ``(x, y, z)`` (``phi`` first, about z; then ``the`` about x; then
    ``psi`` about z, all about fixed axes). It is the matrix Dynamo builds
    from ``(tdrot, tilt, narot) = (phi, the, psi)`` (Dynamo shares TOM's
    convention) and RELION from ``(rot, tilt, psi)`` as intrinsic ZYZ
    ``Rz(rot) Ry(tilt) Rz(psi)``, see :func:`tom_to_relion`. copick's
    ``transformation_`` stores this matrix.

    Parameters
    ----------
    phi, psi, the : float or array_like
        Angles in degrees.

    Returns
    -------
    numpy.ndarray
        ``(3, 3)`` or ``(n, 3, 3)``.

    Examples
    --------
    >>> euler_to_matrix(0, 0, 0).round(6).tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    from scipy.spatial.transform import Rotation

    ang = np.stack(np.broadcast_arrays(np.asarray(psi, float), np.asarray(the, float),
                                       np.asarray(phi, float)), axis=-1)
    return Rotation.from_euler("ZXZ", ang, degrees=True).as_matrix()


def matrix_to_euler(m):
    """Inverse of :func:`euler_to_matrix`: ``(phi, psi, the)`` in degrees.

    ``the`` is returned in [0, 180], ``phi`` and ``psi`` in [-180, 180].

    Examples
    --------
    >>> np.round(matrix_to_euler(euler_to_matrix(10, 20, 30)), 6).tolist()
    [10.0, 20.0, 30.0]
    """
    from scipy.spatial.transform import Rotation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gimbal lock warning: any split of phi+psi is valid
        psi, the, phi = np.moveaxis(Rotation.from_matrix(np.asarray(m, float)).as_euler("ZXZ", degrees=True), -1, 0)
    return phi, psi, the


def _wrap(a):
    return (np.asarray(a, float) + 180.0) % 360.0 - 180.0


def tom_to_relion(phi, psi, the):
    """DeepFinder ZXZ angles to RELION ``(rot, tilt, psi)`` (ZYZ), degrees.

    Equating RELION's intrinsic ZYZ matrix ``Rz(rot) Ry(tilt) Rz(psi)`` with
    :func:`euler_to_matrix` and using ``Rx(t) = Rz(-90) Ry(t) Rz(90)`` gives
    ``rot = psi_tom - 90``, ``tilt = the``, ``psi = phi_tom + 90``. This
    reproduces the known equivalent Dynamo/RELION pair (tdrot, tilt, narot)
    = (-47.273, 1.1777, -132.3) ↔ (rot, tilt, psi) = (137.7, 1.1777, 42.727)
    used as a reference by the ``eulerangles`` package.

    Examples
    --------
    >>> [float(v) for v in tom_to_relion(10, 20, 30)]
    [-70.0, 30.0, 100.0]
    """
    return _wrap(np.asarray(psi, float) - 90.0), np.asarray(the, float), _wrap(np.asarray(phi, float) + 90.0)


def relion_to_tom(rot, tilt, psi):
    """Inverse of :func:`tom_to_relion`: returns ``(phi, psi, the)``.

    Examples
    --------
    >>> [float(v) for v in relion_to_tom(-70, 30, 100)]
    [10.0, 20.0, 30.0]
    """
    return _wrap(np.asarray(psi, float) - 90.0), _wrap(np.asarray(rot, float) + 90.0), np.asarray(tilt, float)


# --------------------------------------------------------------------------- schema
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


# --------------------------------------------------------------------------- helpers
def _warn_unknown(cols, path):
    cols = list(cols)
    if cols:
        msg = f"{os.fspath(path)}: keeping unknown column(s) {', '.join(map(str, cols))}"
        log.warning(msg)
        warnings.warn(msg, stacklevel=3)


def _warn_dropped(df, kept, path, fmt):
    dropped = [c for c in df.columns if c not in kept]
    if dropped:
        msg = f"{os.fspath(path)}: {fmt} cannot store column(s) {', '.join(map(str, dropped))}; not written"
        log.warning(msg)
        warnings.warn(msg, stacklevel=3)


def _num(text):
    """Parse a cell: int, float or the string itself."""
    try:
        return int(text)
    except (TypeError, ValueError):
        pass
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def _fmt(v) -> str:
    """Lossless text for a cell (repr of floats round-trips exactly)."""
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, (np.integer,)):
        return str(int(v))
    return str(v)


def _isna(v) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _single(df, col, path, fmt):
    if col in df.columns and df[col].nunique() > 1:
        raise ValueProblem(f"{os.fspath(path)}: a {fmt} file holds one {'tomogram' if col == 'tomo' else 'class'}, "
                           f"this list has {df[col].nunique()}; split it first (split_by_tomogram / select_classes)")


def _check_file(path):
    p = Path(path)
    if not p.exists():
        raise MissingError("no such file", p)
    if p.is_dir():
        raise FormatError("is a directory, not an object-list file", p)
    return p


def _read_text(p) -> str:
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise FormatError("not UTF-8 text", p, line=line) from None


# Tabular column maps: file column -> schema column.
_CSV_MAP = {"tomo_idx": "tomo", "class_label": "class_label", "x": "x", "y": "y", "z": "z",
            "obj_id": "obj_id", "psi": "psi", "phi": "phi", "the": "the",
            "cluster_size": "size", "score": "score"}
_XML_MAP = dict(_CSV_MAP)
_XLSX_MAP = {"Tomo IDX": "tomo", "Object ID": "obj_id", "Class label": "class_label",
             "x": "x", "y": "y", "z": "z", "psi": "psi", "phi": "phi", "theta": "the",
             "Cluster size": "size", "Score": "score"}
_STAR_MAP = {"rlnTomoName": "tomo", "rlnClassNumber": "class_label",
             "rlnCoordinateX": "x", "rlnCoordinateY": "y", "rlnCoordinateZ": "z",
             "rlnAutopickFigureOfMerit": "score",
             "tomochunkSize": "size", "tomochunkObjId": "obj_id"}
_STAR_CENTRED = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
_STAR_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def _rename_known(df, mapping, path):
    """Rename file columns to schema names; warn about (and keep) the others."""
    ren = {}
    for c in df.columns:
        if c in mapping:
            ren[c] = mapping[c]
        elif c in COLUMNS:
            ren[c] = c
    out = df.rename(columns=ren)
    _warn_unknown([c for c in df.columns if c not in ren], path)
    return out


# --------------------------------------------------------------------------- XML
def _read_xml(p, **kw):
    import xml.etree.ElementTree as ET

    text = _read_text(p)
    if not text.strip():
        raise FormatError("empty file (expected an <objlist> XML document)", p)
    try:
        root = ET.fromstring(p.read_bytes())
    except ET.ParseError as e:
        raise FormatError(f"malformed XML ({e})", p, line=e.position[0]) from None
    if root.tag != "objlist":
        raise FormatError(f"root element is <{root.tag}>, expected <objlist> (DeepFinder object list)", p, line=1)
    # ElementTree keeps no line numbers; find each <object ...> start line for error messages.
    starts = [text.count("\n", 0, i) + 1 for i in _find_tags(text, "object")]
    rows = []
    for i, el in enumerate(root):
        line = starts[i] if i < len(starts) else None
        a = dict(el.attrib)
        miss = [k for k in ("class_label", "x", "y", "z") if k not in a]
        if miss:
            raise FormatError(f"<{el.tag}> lacks required attribute(s) {', '.join(miss)}", p, line=line)
        ang = [k for k in _ANGLES if k in a]
        if 0 < len(ang) < 3:
            raise FormatError(f"<{el.tag}> has {', '.join(ang)} but not all of phi, psi, the", p, line=line)
        row = {}
        for k, v in a.items():
            col = _XML_MAP.get(k, k)
            if col in ("x", "y", "z") + _ANGLES + ("score",):
                try:
                    row[col] = float(v)
                except ValueError:
                    raise FormatError(f"attribute {k}={v!r} is not a number", p, line=line) from None
            elif col in ("class_label", "size", "obj_id"):
                try:
                    row[col] = int(v)
                except ValueError:
                    raise FormatError(f"attribute {k}={v!r} is not an integer", p, line=line) from None
            elif col == "tomo":
                row[col] = int(v) if _int_like_str(v) else v
            else:
                row[col] = _num(v)
        rows.append(row)
    known = set(_XML_MAP.values())
    extra = []
    for r in rows:
        for k in r:
            if k not in known and k not in extra:
                extra.append(k)
    _warn_unknown(extra, p)
    df = pd.DataFrame(rows) if rows else empty_objects()
    vs = root.attrib.get("voxel_size")
    if vs is not None:
        try:
            df.attrs["voxel_size"] = float(vs)
        except ValueError:
            raise FormatError(f"<objlist voxel_size={vs!r}> is not a number", p, line=1) from None
    return df


def _find_tags(text, tag):
    import re

    return [m.start() for m in re.finditer(rf"<{tag}[\s/>]", text)]


def _write_xml(df, p, **kw):
    import xml.etree.ElementTree as ET

    root = ET.Element("objlist")
    if df.attrs.get("voxel_size") is not None:
        root.set("voxel_size", _fmt(float(df.attrs["voxel_size"])))
    inv = {"tomo": "tomo_idx", "size": "cluster_size"}
    # DeepFinder's attribute order; score and other columns follow.
    order = ["tomo", "obj_id", "class_label", "x", "y", "z", "psi", "phi", "the", "size", "score"]
    cols = [c for c in order if c in df.columns] + [c for c in df.columns if c not in order]
    import re

    bad = [str(c) for c in cols if not re.fullmatch(r"[A-Za-z_][\w.-]*", str(c))]
    if bad:
        raise ValueProblem(f"{os.fspath(p)}: column name(s) {', '.join(map(repr, bad))} cannot be XML attributes; "
                           "rename them or write CSV")
    for rec in df[cols].itertuples(index=False, name=None):
        el = ET.SubElement(root, "object")
        for c, v in zip(cols, rec):
            if _isna(v):
                continue
            el.set(inv.get(c, str(c)), _fmt(v))
    ET.indent(root)
    ET.ElementTree(root).write(p, encoding="utf-8", xml_declaration=False)


# --------------------------------------------------------------------------- CSV
def _read_csv(p, **kw):
    text = _read_text(p)
    lines = text.splitlines()
    if not any(l.strip() for l in lines):
        raise FormatError("empty file (expected a header line tomo_idx,class_label,x,y,z)", p)
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader)]
    # pandas' to_csv without index=False adds a first, unnamed index column: not data.
    skip_index = bool(header) and header[0] in ("", "Unnamed: 0")
    if skip_index:
        header = header[1:]
    miss = [c for c in ("x", "y", "z") if c not in header]
    if miss:
        raise FormatError(f"header lacks column(s) {', '.join(miss)}", p, line=1)
    rows = []
    for n, rec in enumerate(reader, start=2):
        if not rec or all(not c.strip() for c in rec):
            continue
        if skip_index:
            rec = rec[1:]
        if len(rec) != len(header):
            raise FormatError(f"{len(rec)} fields, the header has {len(header)}", p, line=n)
        rows.append((n, rec))
    data = {h: [r[i].strip() for _, r in rows] for i, h in enumerate(header)}
    lines_no = [n for n, _ in rows]
    df = pd.DataFrame(data)
    df = _rename_known(df, _CSV_MAP, p)
    return _parse_columns(df, p, lines_no)


def _parse_columns(df, p, lines_no):
    """Convert string columns to numbers, naming the line of the first bad cell."""
    for c in list(df.columns):
        s = df[c]
        if c == "tomo":
            empty = s.astype(str).str.strip() == ""
            if empty.all():
                df = df.drop(columns=c)
            elif empty.any():
                i = int(np.flatnonzero(empty.to_numpy())[0])
                raise FormatError("tomo_idx is empty on this line but not on others", p, line=lines_no[i])
            else:
                df[c] = [int(v) if _int_like_str(v) else v for v in s]
            continue
        num = pd.to_numeric(s.replace("", np.nan), errors="coerce")
        bad = num.isna() & (s.astype(str).str.strip() != "")
        if c in ("x", "y", "z"):
            bad |= s.astype(str).str.strip() == ""
        if c in COLUMNS:
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise FormatError(f"{c}={s.iloc[i]!r} is not a number", p, line=lines_no[i])
            df[c] = num
        else:
            df[c] = num if not bad.any() else s
    if all(a in df.columns for a in _ANGLES):
        na = df[list(_ANGLES)].isna()
        bad = na.any(axis=1) & ~na.all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise FormatError("only some of the angles phi, psi, the are given", p, line=lines_no[i])
    else:
        got = [a for a in _ANGLES if a in df.columns]
        if got:
            raise FormatError(f"column(s) {', '.join(got)} but not all of phi, psi, the", p, line=1)
    return df


def _write_csv(df, p, **kw):
    inv = {"tomo": "tomo_idx", "size": "cluster_size"}
    out = df.copy()
    if "tomo" not in out.columns:
        out.insert(0, "tomo", None)  # ExoDeepFinder always has tomo_idx; empty means "none"
    order = ["tomo", "class_label", "x", "y", "z", "obj_id", "psi", "phi", "the", "size", "score"]
    cols = [c for c in order if c in out.columns] + [c for c in out.columns if c not in order]
    out = out[cols].rename(columns=inv)
    with open(p, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow([str(c) for c in out.columns])
        for rec in out.itertuples(index=False, name=None):
            w.writerow(["" if _isna(v) else _fmt(v) for v in rec])


# --------------------------------------------------------------------------- STAR
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


def _read_star(p, *, shape=None, voxel_size=None, **kw):
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


def _write_star(df, p, *, coordinates="pixel", shape=None, voxel_size=None, **kw):
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
    starfile.write(data, p, float_format="%.17g")


# --------------------------------------------------------------------------- Ais TSV and cet_pick txt
def _read_columns_text(p, *, ncols, names, sep, fmt, tomo=None, **kw):
    text = _read_text(p)
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split(sep) if sep else s.split()
        parts = [q.strip() for q in parts]
        if len(parts) not in ncols:
            raise FormatError(f"{len(parts)} fields, expected {' or '.join(map(str, ncols))} ({fmt})", p, line=n)
        vals = []
        for name, q in zip(names, parts):
            try:
                vals.append(float(q))
            except ValueError:
                raise FormatError(f"{name}={q!r} is not a number", p, line=n) from None
        rows.append(vals)
    width = max((len(r) for r in rows), default=3)
    if any(len(r) != width for r in rows):
        raise FormatError("lines differ in number of fields", p)
    df = pd.DataFrame(rows, columns=list(names[:width])) if rows else empty_objects()[["x", "y", "z"]]
    if tomo is not None:
        df.insert(0, "tomo", tomo)
    return df


def _read_tsv(p, **kw):
    return _read_columns_text(p, ncols=(3,), names=("x", "y", "z"), sep="\t", fmt="Ais TSV x y z", **kw)


def _write_tsv(df, p, **kw):
    _single(df, "tomo", p, "Ais TSV")
    _warn_dropped(df, ("x", "y", "z", "tomo", "class_label"), p, "Ais TSV")
    xyz = np.rint(df[["x", "y", "z"]].to_numpy(float)).astype(np.int64)
    with open(p, "w", encoding="utf-8") as fh:
        for x, y, z in xyz:
            fh.write(f"{x}\t{y}\t{z}\n")


def _read_txt(p, **kw):
    return _read_columns_text(p, ncols=(3, 4), names=("x", "y", "z", "score"), sep=None,
                              fmt="cet_pick x y z [score]", **kw)


def _write_txt(df, p, **kw):
    _single(df, "tomo", p, "cet_pick txt")
    cols = ["x", "y", "z"] + (["score"] if "score" in df.columns else [])
    _warn_dropped(df, cols + ["tomo", "class_label"], p, "cet_pick txt")
    with open(p, "w", encoding="utf-8") as fh:
        for rec in df[cols].itertuples(index=False, name=None):
            fh.write(" ".join(_fmt(float(v)) for v in rec) + "\n")


# --------------------------------------------------------------------------- copick JSON
def _read_json(p, *, classes=None, class_label=None, **kw):
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


def _write_json(df, p, *, user_id=None, session_id=None, voxel_size=None, pickable_object_name=None, **kw):
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
    with open(p, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)


# --------------------------------------------------------------------------- Excel
def _need_openpyxl():
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        raise ValueProblem(".xlsx object lists need openpyxl: pip install openpyxl") from None


def _read_xlsx(p, **kw):
    _need_openpyxl()
    try:
        raw = pd.read_excel(p, sheet_name=0, engine="openpyxl", dtype=object)
    except Exception as e:
        raise FormatError(f"not a readable .xlsx workbook ({type(e).__name__}: {e})", p) from None
    raw = raw.dropna(how="all")
    raw.columns = [str(c).strip() for c in raw.columns]
    # DeepFinder reads columns A-J by position; accept our header names or schema names.
    df = _rename_known(raw, {**_XLSX_MAP, **_CSV_MAP}, p)
    miss = [c for c in ("x", "y", "z") if c not in df.columns]
    if miss:
        raise FormatError(f"sheet lacks column(s) {', '.join(miss)}", p, line=1)
    lines_no = [int(i) + 2 for i in raw.index]  # spreadsheet row numbers
    df = df.reset_index(drop=True)
    df = df.astype(object).where(df.notna(), "")
    df = df.map(lambda v: v if isinstance(v, str) else repr(v) if isinstance(v, float) else str(v))
    # Columns DeepFinder always writes but that are all empty are not data.
    for c in ("tomo", "obj_id", "phi", "psi", "the", "size", "score"):
        if c in df.columns and (df[c] == "").all():
            df = df.drop(columns=c)
    return _parse_columns(df, p, lines_no)


def _write_xlsx(df, p, **kw):
    _need_openpyxl()
    inv = {v: k for k, v in _XLSX_MAP.items()}
    order = ["tomo", "obj_id", "class_label", "x", "y", "z", "psi", "phi", "the", "size"]
    out = pd.DataFrame({inv[c]: (df[c] if c in df.columns else pd.Series([None] * len(df), dtype=object))
                        for c in order})
    for c in df.columns:
        if c not in order:
            out[inv.get(c, str(c))] = df[c].to_numpy()
    out = out.astype(object).where(out.notna(), None)
    out = out.map(lambda v: v.item() if isinstance(v, np.generic) else v)
    with pd.ExcelWriter(p, engine="openpyxl") as xw:
        out.to_excel(xw, sheet_name="Object list", index=False)


# --------------------------------------------------------------------------- dispatch
_READERS = {"xml": _read_xml, "csv": _read_csv, "star": _read_star, "tsv": _read_tsv,
            "json": _read_json, "txt": _read_txt, "xlsx": _read_xlsx}
_WRITERS = {"xml": _write_xml, "csv": _write_csv, "star": _write_star, "tsv": _write_tsv,
            "json": _write_json, "txt": _write_txt, "xlsx": _write_xlsx}


def _format_of(path, format):
    if format is not None:
        f = str(format).lower().lstrip(".")
        f = {"deepfinder": "xml", "exodeepfinder": "csv", "relion": "star", "ais": "tsv",
             "copick": "json", "cet_pick": "txt", "excel": "xlsx"}.get(f, f)
        if f not in _READERS:
            raise ValueProblem(f"unknown object-list format {format!r}; use one of {', '.join(sorted(_READERS))}")
        return f
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise ValueProblem(f"{os.fspath(path)}: cannot tell the object-list format from the extension "
                           f"{ext or '(none)'}; use one of {', '.join(FORMATS)} or pass format=")
    return FORMATS[ext]


def read_objects(path, *, format=None, voxel_size=None, classes=None, **kw):
    """Read an object list from any supported format.

    Parameters
    ----------
    path : path-like
        The file; its extension picks the format unless ``format`` is given.
    format : {"xml", "csv", "star", "tsv", "json", "txt", "xlsx"}, optional
        Also accepted: "deepfinder", "exodeepfinder", "relion", "ais",
        "copick", "cet_pick", "excel".
    voxel_size : float, optional
        Voxel size in Å for ``attrs["voxel_size"]``; overrides the file's.
        Required with ``shape`` for centred-Å STAR files.
    classes : dict, optional
        ``{label: name}`` stored in ``attrs["classes"]`` (copick uses it to
        give the pickable object its label).
    **kw
        Format options: ``shape=(z, y, x)`` (STAR centred Å), ``tomo=``
        (tsv/txt: tomogram to record), ``class_label=`` (copick).

    Returns
    -------
    pandas.DataFrame
        Normalised by :func:`validate_objects`. Formats without classes
        (tsv, txt) get ``class_label`` 1. Unknown columns are kept, with a
        warning.

    Raises
    ------
    MissingError
        The file does not exist.
    FormatError
        The content is malformed (the message names the file and, for
        text formats, the line).

    Examples
    --------
    >>> df = read_objects("picks.xml", voxel_size=10.0)  # doctest: +SKIP
    >>> df[["class_label", "x", "y", "z"]].head()  # doctest: +SKIP
    """
    fmt = _format_of(path, format)
    p = _check_file(path)
    if fmt == "star" or fmt == "json":
        kw["voxel_size"] = voxel_size
    df = _READERS[fmt](p, classes=classes, **kw) if fmt == "json" else _READERS[fmt](p, **kw)
    out = validate_objects(df, voxel_size=voxel_size, classes=classes, path=p)
    log.debug("read %d objects from %s (%s)", len(out), p, fmt)
    return out


def write_objects(df, path, *, format=None, overwrite=True, **kw):
    """Write an object list in any supported format.

    Parameters
    ----------
    df : pandas.DataFrame
        Object list (validated first).
    path : path-like
        Output file; its extension picks the format unless ``format`` is given.
    format : str, optional
        See :func:`read_objects`.
    overwrite : bool
        If False, refuse to replace an existing file.
    **kw
        Format options: STAR ``coordinates="pixel"|"centered"``,
        ``shape=(z, y, x)``, ``voxel_size=``; copick ``user_id``,
        ``session_id``, ``voxel_size``, ``pickable_object_name``,
        ``run_name``.

    Notes
    -----
    Columns a format cannot hold are dropped with a warning; Ais TSV
    rounds coordinates to integers. tsv, txt and copick files hold one
    tomogram (copick also one class): split the list first.

    Examples
    --------
    >>> df = validate_objects(pd.DataFrame({"x": [1.5], "y": [2.0], "z": [3.0]}), voxel_size=10)
    >>> write_objects(df, "picks.xml")  # doctest: +SKIP
    """
    from ..errors import ExistsError

    fmt = _format_of(path, format)
    p = Path(path)
    if p.exists() and not overwrite:
        raise ExistsError("exists (pass overwrite=True to replace it)", p)
    if not p.parent.exists():
        raise MissingError("output folder does not exist", p.parent)
    df = validate_objects(df)
    _WRITERS[fmt](df, p, **kw)
    log.debug("wrote %d objects to %s (%s)", len(df), p, fmt)
    return p
