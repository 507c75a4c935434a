"""Read and write particle object lists in the community formats.

An object list is a :class:`pandas.DataFrame` in the schema of
:mod:`tomochunk._schema` (``tomo, class_label, x, y, z, phi, psi, the,
score, size, obj_id``; ``x, y, z`` in voxels, ``attrs["voxel_size"]`` in
Å, ``attrs["classes"]`` the class names). Every reader's result and every
writer's input goes through :func:`validate_objects`.

Formats (chosen by extension, or by ``format=``), one module each:

========  ===========  ==========================================================
format    extension    content (module)
========  ===========  ==========================================================
xml       .xml         DeepFinder ``<objlist><object class_label= x= .../>`` (deepfinder)
csv       .csv         ExoDeepFinder ``tomo_idx,class_label,x,y,z[,obj_id,...]`` (deepfinder)
star      .star        RELION 5 / RELION 4 particles, via starfile (star)
tsv       .tsv         Ais: integer ``x<TAB>y<TAB>z``, no header (text)
json      .json        copick picks, locations in Å (copick)
txt       .txt         cet_pick ``x y z [score]``, one file per tomogram (text)
xlsx      .xlsx        DeepFinder Excel sheet, columns A-J (excel)
tbl       .tbl         Dynamo table, via dynamotable; names in ``<table>.doc`` (dynamo)
mod       .mod         IMOD model, via imodmodel; one IMOD object per class (imod)
cet_pick_coords        cet_pick training coordinate list ``image_name x_coord ...`` (cetpick)
========  ===========  ==========================================================

A new format is one new module with ``read(path, **kw)`` and
``write(df, path, **kw)`` functions, registered in :data:`_REGISTRY` below.
Euler angles follow DeepFinder (TOM/PyTOM ZXZ); the conversions to the
other tools' angles live in :mod:`tomochunk._geometry`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..._geometry import euler_to_matrix, matrix_to_euler, relion_to_tom, tom_to_relion
from ..._names import inside, safe_name
from ..._schema import COLUMNS, empty_objects, validate_objects
from ...errors import ExistsError, MissingError, ValueProblem
from . import cetpick, copick, deepfinder, dynamo, excel, imod, star, text
from .cetpick import read_image_list, write_image_list
from .copick import write_copick
from ._common import _check_file, log

__all__ = ["read_objects", "write_objects", "write_copick", "empty_objects", "validate_objects",
           "write_per_tomogram", "write_image_list", "read_image_list", "COLUMNS", "FORMATS", "euler_to_matrix", "matrix_to_euler",
           "tom_to_relion", "relion_to_tom"]

#: The one table of formats: name -> (reader, writer, extensions, other names).
_REGISTRY = {
    "xml": (deepfinder.read_xml, deepfinder.write_xml, (".xml",), ("deepfinder",)),
    "csv": (deepfinder.read_csv, deepfinder.write_csv, (".csv",), ("exodeepfinder",)),
    "star": (star.read_star, star.write_star, (".star",), ("relion",)),
    "tsv": (text.read_tsv, text.write_tsv, (".tsv",), ("ais",)),
    "json": (copick.read_json, copick.write_json, (".json",), ("copick",)),
    "txt": (text.read_txt, text.write_txt, (".txt",), ("cet_pick",)),
    "xlsx": (excel.read_xlsx, excel.write_xlsx, (".xlsx",), ("excel",)),
    "tbl": (dynamo.read_tbl, dynamo.write_tbl, (".tbl",), ("dynamo",)),
    "mod": (imod.read_mod, imod.write_mod, (".mod",), ("imod",)),
    "cet_pick_coords": (cetpick.read_coords, cetpick.write_coords, (), ("cetpick_coords", "milopyp")),
}

#: Extension -> format name.
FORMATS = {ext: name for name, (_, _, exts, _) in _REGISTRY.items() for ext in exts}
_ALIASES = {alias: name for name, (_, _, _, aliases) in _REGISTRY.items() for alias in aliases}


def _format_of(path, format):
    if format is not None:
        f = str(format).lower().lstrip(".")
        f = _ALIASES.get(f, f)
        if f not in _REGISTRY:
            raise ValueProblem(f"unknown object-list format {format!r}; use one of {', '.join(sorted(_REGISTRY))}")
        return f
    name = Path(path).name.lower()
    for ext in sorted(FORMATS, key=len, reverse=True):  # longest first: ".tomos.json" before ".json"
        if name.endswith(ext):
            return FORMATS[ext]
    ext = Path(path).suffix.lower()
    raise ValueProblem(f"{os.fspath(path)}: cannot tell the object-list format from the extension "
                       f"{ext or '(none)'}; use one of {', '.join(FORMATS)} or pass format=")


def read_objects(path, *, format=None, voxel_size=None, classes=None, **kw):
    """Read an object list from any supported format.

    Parameters
    ----------
    path : path-like
        The file; its extension picks the format unless ``format`` is given.
    format : {"xml", "csv", "star", "tsv", "json", "txt", "xlsx", "tbl", "mod", "cet_pick_coords"}, optional
        Also accepted: "deepfinder", "exodeepfinder", "relion", "ais",
        "copick", "cet_pick", "excel", "dynamo", "imod", "milopyp".
    voxel_size : float, optional
        Voxel size in Å for ``attrs["voxel_size"]``; overrides the file's.
        Required with ``shape`` for centred-Å STAR files.
    classes : dict, optional
        ``{label: name}`` stored in ``attrs["classes"]`` (copick uses it to
        give the pickable object its label).
    **kw
        Format options: ``shape=(z, y, x)`` (STAR centred Å, when the file
        does not carry it), ``tilt_series_pixel_size=`` (RELION 4 STAR),
        ``tomo=`` (tsv/txt: tomogram to record), ``class_label=`` (copick).

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
    >>> import tempfile, pandas as pd
    >>> p = Path(tempfile.mkdtemp()) / "picks.xml"
    >>> _ = write_objects(pd.DataFrame({"x": [1.5], "y": [2.0], "z": [3.0]}), p)
    >>> read_objects(p)[["class_label", "x", "y", "z"]].values.tolist()
    [[1.0, 1.5, 2.0, 3.0]]
    """
    fmt = _format_of(path, format)
    p = _check_file(path)
    df = _REGISTRY[fmt][0](p, voxel_size=voxel_size, classes=classes, **kw)
    out = validate_objects(df, voxel_size=voxel_size, classes=classes, path=p)
    log.debug("read %d objects from %s (%s)", len(out), p, fmt)
    return out


def write_objects(df, path, *, format=None, overwrite=True, **kw):
    """Write an object list in any supported format, atomically.

    The file is written under a temporary name in the same folder and renamed
    when complete, so a killed write never leaves a truncated list.

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
        Format options: STAR ``coordinates="centered"`` (RELION 5, the
        default; needs ``shape=(z, y, x)`` or ``df.attrs["shape"]``) or
        ``"pixel"`` (RELION 4), ``tilt_series_pixel_size=``,
        ``voxel_size=``, ``tomo_name=``; copick ``user_id``,
        ``session_id``, ``voxel_size``, ``pickable_object_name``,
        ``run_name`` (a project layout: :func:`write_copick`); IMOD
        ``shape=``; cet_pick coordinate list ``tomo=``.

    Returns
    -------
    pathlib.Path
        The file written.

    Notes
    -----
    Columns a format cannot hold are dropped with a warning; Ais TSV
    rounds coordinates to integers. tsv, txt and copick files hold one
    tomogram (copick also one class): split the list first.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> d = Path(tempfile.mkdtemp())
    >>> write_objects(pd.DataFrame({"x": [1.5], "y": [2.0], "z": [3.0]}), d / "picks.csv").name
    'picks.csv'
    """
    fmt = _format_of(path, format)
    p = Path(path)
    if p.exists() and not overwrite:
        raise ExistsError("exists (pass overwrite=True to replace it)", p)
    if not p.parent.exists():
        raise MissingError("output folder does not exist", p.parent)
    df = validate_objects(df)
    _REGISTRY[fmt][1](df, p, **kw)  # each writer writes through _common.atomic
    log.debug("wrote %d objects to %s (%s)", len(df), p, fmt)
    return p


def write_per_tomogram(df, folder, *, format="txt", suffix=None, overwrite=True, **kw):
    """Write one file per tomogram, ``<folder>/<tomogram name><suffix>``, for formats that hold one tomogram.

    Tomogram names come from data, so they pass through
    :func:`tomochunk._names.safe_name`: a file never lands outside
    ``folder``; two names that sanitise alike are refused.

    Parameters
    ----------
    df : pandas.DataFrame
        Object list with a ``tomo`` column.
    folder : path-like
        Output folder (created).
    format : str
        Any format of :func:`write_objects` (default cet_pick ``txt``).
    suffix : str, optional
        File suffix; default the format's extension (``.txt``, ``.tsv``, ...).

    Returns
    -------
    dict
        ``{tomogram: path}``.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> df = pd.DataFrame({"tomo": ["TS_01", "../TS_02"], "x": [1.0, 2], "y": [1.0, 2], "z": [1.0, 2]})
    >>> out = write_per_tomogram(df, tempfile.mkdtemp(), format="tsv")
    >>> sorted(p.name for p in out.values())
    ['TS_01.tsv', 'TS_02.tsv']
    """
    fmt = _format_of(None, format)
    df = validate_objects(df)
    if "tomo" not in df.columns:
        raise ValueProblem("write_per_tomogram: the object list has no 'tomo' column")
    if suffix is None:
        exts = _REGISTRY[fmt][2]
        suffix = exts[0] if exts else ".txt"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for tomo in dict.fromkeys(df["tomo"]):
        name = safe_name(tomo, "tomogram name") + suffix
        if name in names.values():
            other = next(k for k, v in names.items() if v == name)
            raise ValueProblem(f"tomograms {other!r} and {tomo!r} both give the file name {name}; rename one")
        names[tomo] = name
    out = {}
    for tomo, part in df.groupby("tomo", sort=False):
        part = part.reset_index(drop=True)
        part.attrs = dict(df.attrs)
        out[tomo] = write_objects(part, inside(names[tomo], folder), format=fmt, overwrite=overwrite, **kw)
    return out
