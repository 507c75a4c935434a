"""The one rule that turns paths and data into names: tomogram names, safe file names, unique outputs.

Every output name that tomochunk derives from an input path comes from
:func:`tomo_name`; every name taken from data (class names, tomogram names,
copick run names) becomes a file name only through :func:`safe_name`, so it
can never leave the output folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ValueProblem

#: Suffixes the readers know, longest first, so ``t1.ome.zarr`` gives ``t1``.
KNOWN_SUFFIXES = (".ome.zarr", ".zarr", ".mrcs", ".mrc", ".rec", ".map", ".st", ".ali", ".hdf5", ".h5",
                  ".tiff", ".tif", ".em", ".npy")

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def tomo_name(path) -> str:
    """The tomogram name of a path: its file name without every suffix a reader knows.

    Parameters
    ----------
    path : str or os.PathLike

    Examples
    --------
    >>> tomo_name("data/TS_01/t1.ome.zarr"), tomo_name("a/tomo.rec"), tomo_name("b.mrcs/")
    ('t1', 'tomo', 'b')
    >>> tomo_name("run.v2.mrc")
    'run.v2'
    """
    name = Path(os.fspath(path).rstrip("/\\")).name
    low = name.lower()
    for suf in KNOWN_SUFFIXES:
        if low.endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return name


def safe_name(text, what: str = "name") -> str:
    """A file-name-safe form of ``text`` taken from data: no separators, no ``..``, never empty.

    Examples
    --------
    >>> safe_name("../../ESCAPED"), safe_name("/etc/passwd"), safe_name("ribosome 80S")
    ('ESCAPED', 'etc_passwd', 'ribosome_80S')
    """
    s = _UNSAFE.sub("_", str(text)).strip("._")
    s = s.replace("..", "_")
    if not s:
        raise ValueProblem(f"{what} {text!r} gives no usable file name")
    return s[:200]


def unique_names(paths) -> dict:
    """Map each input path to a distinct output name by the one rule.

    Inputs whose :func:`tomo_name` differ keep it. Inputs that share one are told
    apart by their parent folders (``TS_01/tomo.mrc`` gives ``TS_01_tomo``), as
    many levels up as needed. Two paths that resolve to the same file are refused.

    Examples
    --------
    >>> unique_names(["TS_01/tomo.mrc", "TS_02/tomo.mrc", "x/t3.mrc"])
    {'TS_01/tomo.mrc': 'TS_01_tomo', 'TS_02/tomo.mrc': 'TS_02_tomo', 'x/t3.mrc': 't3'}
    """
    paths = [os.fspath(p) for p in paths]
    seen = {}
    for p in paths:
        r = str(Path(p).resolve())
        if r in seen:
            raise ValueProblem(f"{seen[r]} and {p} are the same input")
        seen[r] = p
    names = {p: safe_name(tomo_name(p), "tomogram name") for p in paths}
    depth = 0
    while True:
        groups = {}
        for p, n in names.items():
            groups.setdefault(n, []).append(p)
        clashes = [g for g in groups.values() if len(g) > 1]
        if not clashes:
            return names
        depth += 1
        for group in clashes:
            for p in group:
                parts = Path(p).resolve().parts[:-1]
                if depth > len(parts) - 1:
                    raise ValueProblem(f"{group[0]} and {group[1]} map to the same output name {names[p]!r}")
                prefix = "_".join(safe_name(x) for x in parts[len(parts) - depth:])
                names[p] = f"{prefix}_{safe_name(tomo_name(p), 'tomogram name')}"


def inside(path, folder) -> Path:
    """``folder / path`` resolved, refused if it would lie outside ``folder``.

    Examples
    --------
    >>> inside("a/b.obj", "/tmp/out").as_posix()
    '/tmp/out/a/b.obj'
    """
    root = Path(folder).resolve()
    p = (root / path).resolve()
    if p != root and root not in p.parents:
        raise ValueProblem(f"{path} would lie outside the output folder {folder}")
    return p
