"""Helpers shared by the object-list format modules (a designated private module).

Warnings about columns, lossless cell text, file checks, UTF-8 decoding,
the column parser of the tabular formats, and the atomic write that every
writer goes through.
"""

from __future__ import annotations

import contextlib
import glob
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..._log import get_logger
from ..._schema import _ANGLES, COLUMNS, _int_like_str, empty_objects  # noqa: F401  (re-exported to the format modules)
from ...errors import FormatError, MissingError, ValueProblem

log = get_logger("tomochunk.io.objects")


@contextlib.contextmanager
def atomic(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A write that is killed halfway leaves the temporary file (a dot-name that
    no reader is pointed at), never a truncated ``path``.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> with atomic(d / "a.csv") as tmp:
    ...     _ = tmp.write_text("x,y,z")
    >>> sorted(p.name for p in d.iterdir())
    ['a.csv']
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp{p.suffix}")
    try:
        yield tmp
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    # Leftovers of earlier writes of this file that were killed (another pid): the list is whole now.
    for old in p.parent.glob(f".{glob.escape(p.name)}.*.tmp{glob.escape(p.suffix)}"):
        with contextlib.suppress(OSError):
            old.unlink()


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


def _check_complete(text, p):
    """Refuse a text list whose last line has no line end: a write that stopped partway.

    Every writer here ends its last line; a file without that end was cut
    short (or written by a tool that would then have lost its last row too).
    """
    if text and not text.endswith(("\n", "\r")):
        raise FormatError("truncated: the last line has no line end (was the write interrupted?)", p,
                          line=text.count("\n") + 1)
