"""Plain-text coordinate lists: Ais TSV and cet_pick text.

Ais TSV: integer ``x<TAB>y<TAB>z``, no header. cet_pick: ``x y z [score]``
per line, one file per tomogram (a ``.txt`` that starts with cet_pick's
coordinate-list header is read by :mod:`.cetpick` instead).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...errors import FormatError
from . import cetpick
from ._common import _check_complete, _fmt, _read_text, _single, _warn_dropped, atomic, empty_objects


def _read_columns_text(p, *, ncols, names, sep, fmt, tomo=None, **kw):
    text = _read_text(p)
    _check_complete(text, p)
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


def read_tsv(p, **kw):
    return _read_columns_text(p, ncols=(3,), names=("x", "y", "z"), sep="\t", fmt="Ais TSV x y z", **kw)


def write_tsv(df, p, **kw):
    _single(df, "tomo", p, "Ais TSV")
    _warn_dropped(df, ("x", "y", "z", "tomo", "class_label"), p, "Ais TSV")
    xyz = np.rint(df[["x", "y", "z"]].to_numpy(float)).astype(np.int64)
    with atomic(p) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for x, y, z in xyz:
            fh.write(f"{x}\t{y}\t{z}\n")


def read_txt(p, **kw):
    with open(p, "rb") as fh:
        first = fh.readline().decode("utf-8-sig", "replace").split()
    if first[:1] == ["image_name"]:
        return cetpick.read_coords(p, **kw)
    return _read_columns_text(p, ncols=(3, 4), names=("x", "y", "z", "score"), sep=None,
                              fmt="cet_pick x y z [score]", **kw)


def write_txt(df, p, **kw):
    _single(df, "tomo", p, "cet_pick txt")
    cols = ["x", "y", "z"] + (["score"] if "score" in df.columns else [])
    _warn_dropped(df, cols + ["tomo", "class_label"], p, "cet_pick txt")
    with atomic(p) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for rec in df[cols].itertuples(index=False, name=None):
            fh.write(" ".join(_fmt(float(v)) for v in rec) + "\n")
