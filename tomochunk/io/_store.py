"""Opening, completion and integrity of Zarr stores, and the one resume record (per-chunk markers).

Private to :mod:`tomochunk.io` (public names re-exported by :mod:`tomochunk.io.omezarr`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from itertools import product
from pathlib import Path

import zarr

from ..errors import FormatError, IncompleteError, MissingError, TomochunkError
from ._ngff_meta import jsonable
from ._ngff_meta import ome_attrs as _ome_attrs

PROGRESS_FILE = ".tomochunk_progress"  # a folder of per-chunk markers
_METAFILES = {".zarray", ".zattrs", ".zgroup", "zarr.json", ".zmetadata"}
_EMPTY_TOO = {"write_empty_chunks": True}  # every chunk gets a file, so a missing file is damage


def open_for_write(path):
    """Open an existing array to write into it, empty (all-fill) chunks included.

    ``zarr.open_array(..., config=...)`` drops ``config`` when the array exists (zarr 3.1), so
    an all-zero region (a coarse label level with no object in it) left no chunk file, and the
    completed store then read as damaged; ``with_config`` keeps the setting.

    Examples
    --------
    >>> import tempfile
    >>> p = tempfile.mkdtemp() + "/a"; _ = zarr.create_array(p, shape=(2,), dtype="u1")
    >>> open_for_write(p).config.write_empty_chunks
    True
    """
    return zarr.open_array(str(path), mode="r+").with_config(_EMPTY_TOO)


# --- progress: one marker file per finished chunk ----------------------------------

class Progress:
    """Markers of finished chunks (or regions) in ``<group>/.tomochunk_progress/``.

    Examples
    --------
    >>> import tempfile
    >>> p = Progress(tempfile.mkdtemp()); p.record("0.1.2", "stats")
    >>> p.done()
    {'0.1.2': 'stats'}
    """

    def __init__(self, group_path):
        self.dir = Path(group_path) / PROGRESS_FILE

    def done(self) -> dict:
        if self.dir.is_file():  # an older tomochunk's line record: its chunks are simply rewritten
            self.dir.unlink()
        if not self.dir.is_dir():
            return {}
        out = {}
        for p in self.dir.iterdir():
            if not p.name.startswith("."):
                try:
                    out[p.name] = p.read_text()
                except OSError:
                    continue
        return out

    def record(self, key, payload="") -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(payload)
        os.replace(tmp, self.dir / key)  # the marker appears only once its chunk is on disk

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# --- opening, completion, integrity ------------------------------------------------

def _zarr_meta(path: Path):
    """The metadata file of the Zarr node at ``path`` (None where there is none)."""
    for name in ("zarr.json", ".zgroup", ".zarray"):
        if (path / name).is_file():
            return path / name
    return None


def _check_readable(path) -> None:
    """Raise a one-line error that says what is wrong with a path that should be a Zarr node."""
    path = Path(path)
    if not path.exists():
        raise MissingError("no such Zarr store", path)
    if not path.is_dir():
        raise FormatError("not a Zarr store (a plain file)", path)
    meta = _zarr_meta(path)
    if meta is None:
        raise FormatError("not a Zarr store (no zarr.json, .zgroup or .zarray)", path)
    for f in (meta, path / ".zattrs"):
        if f.is_file():
            try:
                json.loads(f.read_text() or "null")
            except (ValueError, UnicodeDecodeError) as exc:
                raise FormatError(f"invalid JSON in {f.name} ({exc})", path) from None


def _open(path, mode="r"):
    _check_readable(path)
    try:
        return zarr.open(str(path), mode=mode)
    except Exception as exc:  # noqa: BLE001 - zarr raises many kinds here
        raise FormatError(f"not a readable Zarr store ({type(exc).__name__}: {exc})", path) from None


def _open_group(path, mode="r"):
    node = _open(path, mode)
    if not isinstance(node, zarr.Group):
        raise FormatError("a Zarr array where a group was expected", path)
    return node


def ome_attrs(group) -> tuple[dict, str]:
    """(multiscales-holding attribute dict, NGFF version) of a 0.4 or 0.5 group."""
    return _ome_attrs(group.attrs.asdict())


def store_version(path, default="0.4") -> str:
    """NGFF version of an existing store ("0.5" on Zarr 3, "0.4" on Zarr 2), ``default`` if absent.

    Examples
    --------
    >>> store_version("no/such/store.zarr")
    '0.4'
    """
    p = Path(path)
    if (p / "zarr.json").is_file():
        return "0.5"
    if (p / ".zgroup").is_file() or (p / ".zarray").is_file():
        return "0.4"
    return default


def _record(path) -> dict | None:
    """The ``tomochunk`` record of a node (None for foreign stores)."""
    return _open(path).attrs.asdict().get("tomochunk")


def is_complete(path) -> bool:
    """False only for stores that tomochunk started and never finished (or that are not readable);
    foreign stores count as complete."""
    try:
        rec = _record(path)
    except TomochunkError:
        return False
    return rec is None or bool(rec.get("complete"))


def check_complete(path) -> None:
    """Refuse an unreadable store, one that was never finished, or one whose chunk files went missing."""
    rec = _record(path)
    if rec is not None and not rec.get("complete"):
        raise IncompleteError("incomplete store (no completion marker); rerun the command that wrote it "
                              "to resume it", path)
    if rec:
        check_chunks(path, rec)


def _chunk_files(array_dir: Path):
    for root, dirs, files in os.walk(array_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if not f.startswith(".") and f not in _METAFILES and not f.endswith(".partial"):
                yield Path(root) / f


def _n_chunks(arr) -> int:
    return math.prod(math.ceil(s / c) for s, c in zip(arr.shape, arr.chunks)) if arr.ndim else 1


def _chunk_key(arr, idx) -> str:
    """Relative file path of chunk ``idx`` of ``arr`` (as our writers lay chunks out)."""
    keys = "/".join(str(i) for i in idx) or "0"
    return keys if arr.metadata.zarr_format == 2 else "c/" + keys


def check_chunks(path, rec=None) -> None:
    """Every array the writer recorded as whole still has all its chunk files (a cheap file count).

    Zarr reads a missing chunk as its fill value, silently; our writers write every chunk,
    empty ones included, and record how many per array when they finish.
    """
    path = Path(path)
    rec = _record(path) if rec is None else rec
    for name, n in ((rec or {}).get("written") or {}).items():
        have = sum(1 for _ in _chunk_files(path / name))
        if have < int(n):
            arr = zarr.open_array(str(path / name), mode="r")
            grid = [range(math.ceil(s / c)) for s, c in zip(arr.shape, arr.chunks)]
            first = next((k for idx in product(*grid)
                          if not (path / name / (k := _chunk_key(arr, idx))).is_file()), "?")
            raise FormatError(f"damaged store: array {name!r} has {have} of its {n} chunk files "
                              f"(missing {name}/{first}, ...); rewrite it with overwrite", path)


def _array_names(path) -> list:
    """Names of the arrays directly in the group at ``path``, from their metadata files (listing
    the group through zarr would warn about our progress folder)."""
    out = []
    for p in sorted(Path(path).iterdir()):
        if (p / ".zarray").is_file():
            out.append(p.name)
        elif (p / "zarr.json").is_file():
            try:
                if json.loads((p / "zarr.json").read_text()).get("node_type") == "array":
                    out.append(p.name)
            except ValueError:
                continue
    return out


def _cleanup_tmp(path) -> None:
    """Remove temporary chunk files left by an interrupted writer (``.<name>.*.tmp``, zarr's
    ``<name>.<hex>.partial``)."""
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != PROGRESS_FILE]
        for f in files:
            if (f.startswith(".") and f.endswith(".tmp")) or f.endswith(".partial"):  # .partial: zarr's own
                try:
                    os.unlink(os.path.join(root, f))
                except OSError:
                    pass


def mark_complete(path, **extra) -> None:
    """Write the completion marker last (with the chunk count of each array); remove the progress record."""
    g = _open_group(path, mode="r+")
    _cleanup_tmp(path)
    rec = dict(g.attrs.asdict().get("tomochunk", {}))
    written = {name: _n_chunks(zarr.open_array(str(Path(path) / name), mode="r")) for name in _array_names(path)}
    rec.update(jsonable(extra), complete=True, written=written)
    g.attrs["tomochunk"] = rec
    Progress(path).clear()
