"""cet_pick (MiLoPYP) training lists: the image list and the coordinate list.

cet_pick's refinement module reads two tab-separated files with pandas
(``read_csv(sep="\\t")``): an image list ``image_name<TAB>rec_path`` (one
tomogram per line) and a coordinate list ``image_name<TAB>x_coord<TAB>y_coord
<TAB>z_coord`` (optionally ``class``), integer voxels that it casts with
``astype(np.int32)``. Its per-tomogram outputs, ``x y z [score]``, are the
``txt`` format of :mod:`.text`; a ``.txt`` file whose first line is this
header is read as a coordinate list.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..._names import tomo_name
from ...errors import FormatError, MissingError, ValueProblem
from ._common import _check_complete, _read_text, _warn_dropped, _warn_unknown, atomic, empty_objects

__all__ = ["read_coords", "write_coords", "read_image_list", "write_image_list", "COORD_HEADER", "IMAGE_HEADER"]

COORD_HEADER = ("image_name", "x_coord", "y_coord", "z_coord")
IMAGE_HEADER = ("image_name", "rec_path")


def _table(p, what):
    text = _read_text(p)
    if not text.strip():
        raise FormatError(f"empty file (expected a cet_pick {what} with a header line)", p)
    _check_complete(text, p)
    rows = [r for r in csv.reader(io.StringIO(text), delimiter="\t") if r and any(c.strip() for c in r)]
    header = [h.strip() for h in rows[0]]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise FormatError(f"duplicated column(s) {', '.join(dup)} in the header", p, line=1)
    return header, rows[1:]


def read_coords(p, **kw):
    """Read a cet_pick coordinate list (all tomograms, ``tomo`` = ``image_name``)."""
    header, rows = _table(p, "coordinate list")
    miss = [c for c in COORD_HEADER if c not in header]
    if miss:
        raise FormatError(f"header lacks column(s) {', '.join(miss)} (cet_pick coordinate list)", p, line=1)
    idx = {h: i for i, h in enumerate(header)}
    out = {"tomo": [], "x": [], "y": [], "z": []}
    cls = [] if "class" in idx else None
    for n, r in enumerate(rows, start=2):
        if len(r) != len(header):
            raise FormatError(f"{len(r)} fields, the header has {len(header)}", p, line=n)
        out["tomo"].append(r[idx["image_name"]].strip())
        for c, h in (("x", "x_coord"), ("y", "y_coord"), ("z", "z_coord")):
            try:
                out[c].append(float(r[idx[h]]))
            except ValueError:
                raise FormatError(f"{h}={r[idx[h]]!r} is not a number", p, line=n) from None
        if cls is not None:
            cls.append(r[idx["class"]].strip())
    df = pd.DataFrame(out) if rows else empty_objects()[["x", "y", "z"]]
    if cls is not None:
        # cet_pick's class is its own (1 positive, 2 other); kept as a column, not as class_label.
        df["cet_pick_class"] = pd.to_numeric(pd.Series(cls, dtype=object), errors="coerce")
    _warn_unknown([h for h in header if h not in COORD_HEADER + ("class",)], p)
    return df


def write_coords(df, p, *, tomo=None, **kw):
    """Write a cet_pick coordinate list: integer (rounded) voxels, one line per object."""
    _warn_dropped(df, ("tomo", "class_label", "x", "y", "z"), p, "cet_pick coordinate list")
    if "tomo" in df.columns:
        names = df["tomo"].astype(str).to_numpy()
    elif tomo is not None:
        names = np.full(len(df), str(tomo))
    else:
        raise ValueProblem(f"{os.fspath(p)}: a cet_pick coordinate list names each object's tomogram: "
                           "the list needs a 'tomo' column, or pass tomo=")
    bad = [n for n in set(names) if "\t" in n or "\n" in n]
    if bad:
        raise ValueProblem(f"{os.fspath(p)}: tomogram name {bad[0]!r} holds a tab or line end")
    xyz = np.rint(df[["x", "y", "z"]].to_numpy(float)).astype(np.int64)  # cet_pick reads int32
    with atomic(p) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write("\t".join(COORD_HEADER) + "\n")
        for name, (x, y, z) in zip(names, xyz):
            fh.write(f"{name}\t{x}\t{y}\t{z}\n")


def read_image_list(path) -> dict:
    """``{image_name: rec_path}`` from a cet_pick image list (``path`` also accepted as the column name).

    Relative paths are returned as written (cet_pick resolves them from its working folder).
    """
    p = Path(path)
    if not p.exists():
        raise MissingError("no such file", p)
    header, rows = _table(p, "image list")
    col = "rec_path" if "rec_path" in header else "path" if "path" in header else None
    if "image_name" not in header or col is None:
        raise FormatError("header lacks image_name and rec_path (cet_pick image list)", p, line=1)
    i, j = header.index("image_name"), header.index(col)
    out = {}
    for n, r in enumerate(rows, start=2):
        if len(r) != len(header):
            raise FormatError(f"{len(r)} fields, the header has {len(header)}", p, line=n)
        out[r[i].strip()] = r[j].strip()
    return out


def write_image_list(tomograms, path) -> Path:
    """Write a cet_pick image list from tomogram paths (names by :func:`tomochunk._names.tomo_name`) or a dict.

    Examples
    --------
    >>> import tempfile
    >>> p = write_image_list(["data/TS_01.rec", "data/TS_02.rec"], Path(tempfile.mkdtemp()) / "imgs.txt")
    >>> read_image_list(p)
    {'TS_01': 'data/TS_01.rec', 'TS_02': 'data/TS_02.rec'}
    """
    items = tomograms.items() if isinstance(tomograms, dict) else ((tomo_name(t), os.fspath(t)) for t in tomograms)
    items = [(str(k), str(v)) for k, v in items]
    names = [k for k, _ in items]
    if len(set(names)) != len(names):
        dup = sorted({k for k in names if names.count(k) > 1})
        raise ValueProblem(f"tomograms {dup[0]!r} appear twice in the image list; pass a dict of unique names")
    p = Path(path)
    with atomic(p) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write("\t".join(IMAGE_HEADER) + "\n")
        for k, v in items:
            fh.write(f"{k}\t{v}\n")
    return p
