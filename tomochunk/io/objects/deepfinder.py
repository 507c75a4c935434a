"""DeepFinder object lists: the XML ``<objlist>`` and the ExoDeepFinder CSV.

XML: ``<objlist>`` root, children ``<object tomo_idx= obj_id= class_label=
x= y= z= psi= phi= the= cluster_size=/>``; only ``class_label, x, y, z``
are required. CSV: header ``tomo_idx,class_label,x,y,z`` and optional
``obj_id,psi,phi,the,cluster_size``, read as UTF-8 with or without a BOM.

DeepFinder's ``read_xml`` casts ``tomo_idx`` with ``int()``, so tomogram
names are written as indices 0, 1, ... and the names are kept beside the
list in ``<list>.tomos.json`` (:func:`tomo_map_path`), which the readers
apply, so names round-trip.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd

from ...errors import FormatError, ValueProblem
from ._common import (atomic, _ANGLES, _check_complete, _fmt, _int_like_str, _isna, _num, _parse_columns, _read_text, _rename_known,
                      _warn_unknown, empty_objects)

#: Column map of the CSV and XML files: file column -> schema column.
CSV_MAP = {"tomo_idx": "tomo", "class_label": "class_label", "x": "x", "y": "y", "z": "z",
           "obj_id": "obj_id", "psi": "psi", "phi": "phi", "the": "the",
           "cluster_size": "size", "score": "score"}
_CSV_MAP = CSV_MAP
_XML_MAP = dict(CSV_MAP)


def tomo_map_path(path) -> Path:
    """The file beside a DeepFinder list that maps its integer ``tomo_idx`` to tomogram names.

    Examples
    --------
    >>> tomo_map_path("out/picks.xml").as_posix()
    'out/picks.xml.tomos.json'
    """
    p = Path(path)
    return p.with_name(p.name + ".tomos.json")


def _index_tomos(df):
    """Tomogram names replaced by indices (order of first appearance), and the ``{index: name}`` map."""
    if "tomo" not in df.columns or pd.api.types.is_integer_dtype(df["tomo"]):
        return df, None
    index = {n: i for i, n in enumerate(dict.fromkeys(df["tomo"]))}
    out = df.copy()
    out["tomo"] = df["tomo"].map(index).astype("int64")
    return out, {str(i): str(n) for n, i in index.items()}


def _write_tomo_map(names, p):
    """Write the name map beside ``p`` (before the list itself), or remove a stale one."""
    side = tomo_map_path(p)
    if names is None:
        if side.exists():
            side.unlink()  # a stale map would rename this list's indices
        return
    doc = {"about": f"tomochunk: tomogram names of the integer tomo_idx in {p.name}", "tomograms": names}
    with atomic(side) as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def index_tomograms(df, p):
    """``df`` with integer ``tomo`` indices, their name map written beside ``p`` (DeepFinder casts with ``int``)."""
    df, names = _index_tomos(df)
    _write_tomo_map(names, p)
    return df


def name_tomograms(df, p):
    """The inverse of :func:`index_tomograms` for a list read from ``p``."""
    return _name_tomos(df, p)


def _name_tomos(df, p):
    """Apply the name map beside ``p`` (if any) to integer tomogram indices."""
    side = tomo_map_path(p)
    if "tomo" not in df.columns or not side.exists():
        return df
    try:
        names = json.loads(side.read_text(encoding="utf-8"))["tomograms"]
        names = {int(k): str(v) for k, v in names.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise FormatError("not a tomogram name map (expected {\"tomograms\": {\"0\": name, ...}})", side) from None
    df["tomo"] = [names.get(v, v) if isinstance(v, int) else v for v in df["tomo"]]
    return df


def read_xml(p, **kw):
    text = _read_text(p)
    if not text.strip():
        raise FormatError("empty file (expected an <objlist> XML document)", p)
    try:
        root = ET.fromstring(p.read_bytes())
    except ET.ParseError as e:
        if "<objlist" in text and "</objlist>" not in text:
            raise FormatError("truncated: no closing </objlist> (was the write interrupted?)", p,
                              line=e.position[0]) from None
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
    return _name_tomos(df, p)


def _find_tags(text, tag):
    return [m.start() for m in re.finditer(rf"<{tag}[\s/>]", text)]


def write_xml(df, p, **kw):
    df, names = _index_tomos(df)
    root = ET.Element("objlist")
    if df.attrs.get("voxel_size") is not None:
        root.set("voxel_size", _fmt(float(df.attrs["voxel_size"])))
    inv = {"tomo": "tomo_idx", "size": "cluster_size"}
    # DeepFinder's attribute order; score and other columns follow.
    order = ["tomo", "obj_id", "class_label", "x", "y", "z", "psi", "phi", "the", "size", "score"]
    cols = [c for c in order if c in df.columns] + [c for c in df.columns if c not in order]
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
    _write_tomo_map(names, p)
    with atomic(p) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=False)


def read_csv(p, **kw):
    text = _read_text(p)
    lines = text.splitlines()
    if not any(l.strip() for l in lines):
        raise FormatError("empty file (expected a header line tomo_idx,class_label,x,y,z)", p)
    _check_complete(text, p)
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader)]
    # pandas' to_csv without index=False adds a first, unnamed index column: not data.
    skip_index = bool(header) and header[0] in ("", "Unnamed: 0")
    if skip_index:
        header = header[1:]
    miss = [c for c in ("x", "y", "z") if c not in header]
    if miss:
        raise FormatError(f"header lacks column(s) {', '.join(miss)}", p, line=1)
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise FormatError(f"duplicated column(s) {', '.join(dup)} in the header", p, line=1)
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
    return _name_tomos(_parse_columns(df, p, lines_no), p)


def write_csv(df, p, **kw):
    df, names = _index_tomos(df)
    _write_tomo_map(names, p)
    inv = {"tomo": "tomo_idx", "size": "cluster_size"}
    out = df.copy()
    if "tomo" not in out.columns:
        out.insert(0, "tomo", None)  # ExoDeepFinder always has tomo_idx; empty means "none"
    order = ["tomo", "class_label", "x", "y", "z", "obj_id", "psi", "phi", "the", "size", "score"]
    cols = [c for c in order if c in out.columns] + [c for c in out.columns if c not in order]
    out = out[cols].rename(columns=inv)
    with atomic(p) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow([str(c) for c in out.columns])
        for rec in out.itertuples(index=False, name=None):
            w.writerow(["" if _isna(v) else _fmt(v) for v in rec])
