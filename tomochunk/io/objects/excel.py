"""DeepFinder Excel sheets (``.xlsx``, through ``openpyxl``), columns A-J as DeepFinder writes them.

Tomogram names become integer ``Tomo IDX`` values with the name map beside the sheet, as for
the XML and CSV lists (:func:`~tomochunk.io.objects.deepfinder.index_tomograms`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...errors import FormatError, ValueProblem
from ._common import atomic, _parse_columns, _rename_known
from .deepfinder import CSV_MAP as _CSV_MAP
from .deepfinder import index_tomograms, name_tomograms


_XLSX_MAP = {"Tomo IDX": "tomo", "Object ID": "obj_id", "Class label": "class_label",
             "x": "x", "y": "y", "z": "z", "psi": "psi", "phi": "phi", "theta": "the",
             "Cluster size": "size", "Score": "score"}


def _need_openpyxl():
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        raise ValueProblem(".xlsx object lists need openpyxl: pip install openpyxl") from None


def read_xlsx(p, **kw):
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
    return name_tomograms(_parse_columns(df, p, lines_no), p)


def write_xlsx(df, p, **kw):
    _need_openpyxl()
    df = index_tomograms(df, p)  # DeepFinder's read_excel casts "Tomo IDX" with int()
    inv = {v: k for k, v in _XLSX_MAP.items()}
    order = ["tomo", "obj_id", "class_label", "x", "y", "z", "psi", "phi", "the", "size"]
    out = pd.DataFrame({inv[c]: (df[c] if c in df.columns else pd.Series([None] * len(df), dtype=object))
                        for c in order})
    for c in df.columns:
        if c not in order:
            out[inv.get(c, str(c))] = df[c].to_numpy()
    out = out.astype(object).where(out.notna(), None)
    out = out.map(lambda v: v.item() if isinstance(v, np.generic) else v)
    with atomic(p) as tmp, pd.ExcelWriter(tmp, engine="openpyxl") as xw:
        out.to_excel(xw, sheet_name="Object list", index=False)
