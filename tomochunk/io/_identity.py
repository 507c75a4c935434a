"""What a store was written from: source identities (resume keys) and input/output aliasing.

A resumable writer records the identity of its source, so that a rerun
resumes only the same data: path, size, modification time and a checksum of
a sample of the bytes (the header, the end, and 16 blocks spread between;
for a folder such as a Zarr store or a TIFF series, its file list with sizes
and its metadata files). It also refuses outputs that are, contain, or lie
inside one of its inputs, before anything is deleted.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import ValueProblem

_SAMPLE = 4096
_META = {".zarray", ".zattrs", ".zgroup", "zarr.json"}


def _file_digest(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        offsets = {0, max(0, size - 65536)} | {size * i // 17 for i in range(1, 17)}
        for off in sorted(offsets):
            fh.seek(off)
            h.update(fh.read(65536 if off in (0, max(0, size - 65536)) else _SAMPLE))
    return h.hexdigest()[:32]


def source_identity(path) -> dict:
    """``{"path", "size", "mtime", "digest"}`` of a file or folder, cheap for large files.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.bin"; _ = p.write_bytes(b"x" * 100)
    >>> sorted(source_identity(p)), source_identity(p)["size"]
    (['digest', 'mtime', 'path', 'size'], 100)
    """
    p = Path(path).resolve()
    if p.is_file():
        st = p.stat()
        return {"path": str(p), "size": st.st_size, "mtime": st.st_mtime_ns, "digest": _file_digest(p, st.st_size)}
    h, size, mtime = hashlib.sha256(), 0, 0
    for root, dirs, files in os.walk(p):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".tomochunk"))
        for name in sorted(files):
            f = Path(root) / name
            if name.endswith(".tmp"):
                continue
            st = f.stat()
            size += st.st_size
            mtime = max(mtime, st.st_mtime_ns)
            h.update(f"{f.relative_to(p)}:{st.st_size}\n".encode())
            if name in _META:
                h.update(f.read_bytes())
    return {"path": str(p), "size": size, "mtime": mtime, "digest": h.hexdigest()[:32]}


def _paths_in(obj, out, depth=0):
    """File-system paths a dask graph value reads from (zarr arrays, our sources, memory maps)."""
    if depth > 8 or obj is None or isinstance(obj, (int, float, bytes, bool)):
        return
    if isinstance(obj, str):
        return
    if isinstance(obj, (tuple, list, set, frozenset)):
        for v in obj:
            _paths_in(v, out, depth + 1)
        return
    if isinstance(obj, dict):
        for v in obj.values():
            _paths_in(v, out, depth + 1)
        return
    store = getattr(obj, "store", None)
    root = getattr(store, "root", None)
    if root is not None:  # a zarr array or group on a local store
        out.add(Path(str(root)) / str(getattr(obj, "path", "") or ""))
        return
    fname = getattr(obj, "filename", None)
    if isinstance(fname, (str, os.PathLike)):  # numpy memmap
        out.add(Path(fname))
        return
    p = getattr(obj, "path", None)
    if isinstance(p, (str, os.PathLike)) and type(obj).__module__.startswith("tomochunk"):
        out.add(Path(p))
    for attr in ("value", "func", "args", "kwargs", "array", "arr", "_array"):  # task-spec nodes, wrappers
        if attr in getattr(obj, "__dict__", {}) or attr in getattr(type(obj), "__slots__", ()):
            try:
                _paths_in(getattr(obj, attr), out, depth + 1)
            except Exception:  # noqa: BLE001 - a property that cannot be read holds no path
                pass


def graph_paths(data) -> set:
    """Paths that a dask collection (or xarray over one) reads from.

    Examples
    --------
    >>> import dask.array as da
    >>> graph_paths(da.zeros(3))
    set()
    """
    data = getattr(data, "data", data)
    graph = getattr(data, "__dask_graph__", None)
    out: set = set()
    if graph is None:
        _paths_in(data, out)
        return out
    for v in dict(graph()).values():
        _paths_in(v, out)
    return out


def _related(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_alias(output, inputs) -> None:
    """Refuse an ``output`` that is, holds, or lies inside one of ``inputs`` (paths or dask collections).

    Examples
    --------
    >>> check_alias("out/t.zarr", ["in/t.mrc"])
    >>> check_alias("z/t.zarr", ["z/t.zarr/0"])
    Traceback (most recent call last):
    ...
    tomochunk.errors.ValueProblem: z/t.zarr: the output would overwrite its own input z/t.zarr/0; choose another output
    """
    out = Path(os.path.abspath(output))
    out_real = Path(output).resolve()
    for item in inputs or ():
        paths = [Path(item)] if isinstance(item, (str, os.PathLike)) else sorted(graph_paths(item))
        for p in paths:
            if _related(out, Path(os.path.abspath(p))) or _related(out_real, Path(p).resolve()):
                raise ValueProblem(f"the output would overwrite its own input {p}; choose another output",
                                   output)
