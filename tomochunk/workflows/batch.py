"""Batch runs over many tomograms: one distinct output name per input, by the one name rule.

``TS_01/tomo.mrc`` and ``TS_02/tomo.mrc`` are a common layout. Mapping both to
``out/tomo.zarr`` would write the second tomogram over the first (or report the first one's
picks for the second), so every command that takes many inputs names its outputs through
:func:`output_names`: inputs keep their tomogram name when it is unique and get their parent
folders' names in front when it is not (:func:`tomochunk._names.unique_names`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .._log import get_logger
from .._names import unique_names
from ..errors import ValueProblem
from .picking import pick_inputs

log = get_logger(__name__)


def output_names(inputs) -> dict:
    """``{input: name}``, distinct names for every input (see the module docstring).

    Examples
    --------
    >>> output_names(["TS_01/tomo.mrc", "TS_02/tomo.mrc"])
    {'TS_01/tomo.mrc': 'TS_01_tomo', 'TS_02/tomo.mrc': 'TS_02_tomo'}
    >>> output_names(["a/t1.ome.zarr", "b/t2.rec"])
    {'a/t1.ome.zarr': 't1', 'b/t2.rec': 't2'}
    """
    inputs = [os.fspath(p) for p in inputs]
    if not inputs:
        raise ValueProblem("no inputs given")
    return unique_names(inputs)


def output_paths(inputs, outdir, suffix: str = ".zarr") -> dict:
    """``{input: outdir / (name + suffix)}`` with the names of :func:`output_names`.

    Examples
    --------
    >>> {k: v.as_posix() for k, v in output_paths(["x/a.mrc", "y/a.mrc"], "out").items()}
    {'x/a.mrc': 'out/x_a.zarr', 'y/a.mrc': 'out/y_a.zarr'}
    """
    return {src: Path(outdir) / f"{name}{suffix}" for src, name in output_names(inputs).items()}


def pick_many(inputs, *, names=None, **kw) -> pd.DataFrame:
    """One object list from many label or score maps, each tomogram under its own name.

    Each input is picked by :func:`~tomochunk.workflows.picking.pick_inputs` (``**kw``: its
    options); the ``tomo`` column holds the input's name from :func:`output_names` (or from
    ``names``, ``{input: name}``, e.g. copick run names), so two ``tomo.zarr`` stores in
    different folders stay apart. ``obj_id`` numbers the whole list.

    Examples
    --------
    >>> objs = pick_many(["TS_01/tomo.zarr", "TS_02/tomo.zarr"], method="cc")  # doctest: +SKIP
    >>> sorted(objs["tomo"].unique())  # doctest: +SKIP
    ['TS_01_tomo', 'TS_02_tomo']
    """
    if "tomo" in kw:
        raise ValueProblem("pick_many names each tomogram itself; pick one input with pick_inputs(tomo=...)")
    frames = []
    names = output_names(inputs) if names is None else {os.fspath(k): v for k, v in names.items()}
    for src, name in names.items():
        df = pick_inputs(src, tomo=name, **kw)
        log.info("%s: %d objects", src, len(df))
        frames.append(df)
    # one list holds one voxel size (a STAR file one pixel size): mixed inputs would be mislabelled
    sizes = {str(src): df.attrs.get("voxel_size") for src, df in zip(inputs, frames)}
    if len({v for v in sizes.values() if v is not None}) > 1:
        listed = ", ".join(f"{k}: {v:g} Å" for k, v in sizes.items() if v is not None)
        raise ValueProblem(f"inputs have different voxel sizes ({listed}); one object list holds one voxel "
                           "size: pick them into separate files, or pass --voxel-size")
    out = pd.concat(frames, ignore_index=True)
    out.attrs = dict(frames[0].attrs)
    if len({tuple(df.attrs.get("shape") or ()) for df in frames}) > 1:
        out.attrs.pop("shape", None)  # centred STAR coordinates need each tomogram's own shape
    out["obj_id"] = range(1, len(out) + 1)
    return out
