"""The whole job over many tomograms from one config: convert -> segment -> pick (-> evaluate).

Every stage is skipped for a tomogram whose output is already complete, so an
interrupted run is resumed by running it again.

Example config (YAML; paths relative to the config file)::

    inputs: ["tomograms/*.mrc"]      # files, folders of TIFF frames or globs
    outdir: out
    workers: 2                       # embedded LocalCluster ...
    scheduler: null                  # ... or the address of a running Dask scheduler
    cluster: null                    # ... or batch jobs: {kind: slurm, jobs: 2, cores: 4, memory: 16GB,
                                     #     gpus: 1} (tomochunk.parallel.client_options lists the keys)
    convert: {levels: 3}
    segment: {model: phantom, patch_size: 48, crop: 8}   # "phantom": the model shipped in the package
    pick: {method: meanshift, radius: 5, min_size: 20, formats: [xml, star]}
    evaluate: {truth: "truth/{name}.xml", max_dist: 4}  # optional

``inputs`` may instead be one copick project config (``inputs: copick.json``): each run's
tomogram is an input (named after the run), and its label map and picks also go back into the
project where copick lists them. The optional ``copick`` section chooses the tomograms and names
the outputs: ``{voxel_spacing: 10, tomo_type: wbp, user: tomochunk, session: "0", name:
segmentation}`` (:mod:`tomochunk.io.copick_project`).
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import pandas as pd

from .._log import get_logger
from ..errors import FormatError, MissingError
from ..io.convert import convert
from ..io.copick_project import export_segmentation, project_inputs
from ..io.objects import read_objects, write_copick, write_objects
from ..io.omezarr import is_complete, source_identity
from ..io.volume import open_volume
from ..nn.segment import segment
from ..ops.evaluate import evaluate
from ..parallel import client_from_config
from .batch import output_names
from .picking import METHODS, pick_inputs
from .segment import write_segmentation

log = get_logger(__name__)

SHIPPED_MODELS = Path(__file__).parent.parent / "models"
DEFAULTS = {
    "convert": {"levels": 3},
    "segment": {"model": "phantom", "patch_size": 48, "crop": 8, "blend": "crop"},
    "pick": {"method": "meanshift", "radius": 5, "min_size": 20, "formats": ["xml", "star"]},
}


def shipped_model(name: str = "phantom") -> Path:
    """Path of a model shipped inside the package (``phantom``: trained on tomochunk phantoms)."""
    path = SHIPPED_MODELS / f"{name}_unet.keras"
    if not path.exists():
        raise MissingError(f"no shipped model named {name!r}", path)
    return path


def shipped_model_info(name: str = "phantom") -> dict:
    p = SHIPPED_MODELS / f"{name}_unet.json"
    return json.loads(p.read_text()) if p.exists() else {}


def load_config(path) -> dict:
    """Read a YAML (or JSON) run config, fill defaults, resolve paths against its folder."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise MissingError("no such config file", path)
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise FormatError(f"invalid YAML ({getattr(exc, 'problem', exc)})", path,
                          line=None if line is None else line + 1) from None
    if not isinstance(cfg, dict) or "inputs" not in cfg:
        raise FormatError("the config needs an 'inputs' list", path)
    unknown = set(cfg) - {"inputs", "outdir", "workers", "scheduler", "cluster", "convert", "segment", "pick",
                          "evaluate", "copick"}
    if unknown:
        raise FormatError(f"unknown config keys: {', '.join(sorted(unknown))}", path)
    check_config(cfg, path)
    cfg["_base"] = path.parent
    return cfg


#: The keys each section of a config may hold (a typo is named before any work starts).
SECTION_KEYS = {
    "convert": {"levels", "chunks", "dataset", "ngff", "compression", "threads"},
    "segment": {"model", "patch_size", "crop", "batch_size", "blend", "normalize", "core_overlap",
                "block_patches", "tiling", "block_shape", "dtype", "precision"},
    "pick": {"method", "radius", "threshold", "min_size", "min_spacing", "margin", "top_k", "classes", "units",
             "voxel_size", "level", "z_range", "border", "smooth", "formats"},
    "evaluate": {"truth", "max_dist"},
    "copick": {"voxel_spacing", "tomo_type", "user", "session", "name"},
}


def _positive(cfg, section, key, path, *, integer=False, zero=False):
    v = (cfg.get(section) or {}).get(key)
    if v is None:
        return
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (v >= 0 if zero else v > 0)
    if not ok or (integer and int(v) != v) or v != v:
        what = "an integer" if integer else "a number"
        raise FormatError(f"{section}.{key} must be {what} {'>= 0' if zero else '> 0'}, got {v!r}", path)


def check_config(cfg, path="<config>") -> None:
    """Refuse unknown keys, and values of the wrong type or range, with a one-line FormatError.

    Examples
    --------
    >>> check_config({"inputs": ["a.mrc"], "convert": {"level": 3}})
    Traceback (most recent call last):
    ...
    tomochunk.errors.FormatError: <config>: unknown key in convert: level (known: chunks, compression, dataset, levels, ngff, threads)
    """
    for section, known in SECTION_KEYS.items():
        sec = cfg.get(section)
        if sec is None:
            continue
        if not isinstance(sec, dict):
            raise FormatError(f"{section} must be a mapping of options, got {type(sec).__name__}", path)
        unknown = set(sec) - known
        if unknown:
            raise FormatError(f"unknown key{'s' if len(unknown) > 1 else ''} in {section}: "
                              f"{', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})", path)
    for section, key, integer, zero in (("convert", "levels", True, False), ("segment", "patch_size", True, False),
                                        ("segment", "crop", True, True), ("segment", "batch_size", True, False),
                                        ("pick", "radius", False, False), ("pick", "voxel_size", False, False),
                                        ("pick", "min_size", False, True), ("pick", "min_spacing", False, True),
                                        ("pick", "margin", False, True), ("pick", "top_k", True, False),
                                        ("evaluate", "max_dist", False, False)):
        _positive(cfg, section, key, path, integer=integer, zero=zero)
    seg = cfg.get("segment") or {}
    patch, crop = seg.get("patch_size"), seg.get("crop", 0)
    if patch is not None and patch % 4:
        raise FormatError(f"segment.patch_size must be a multiple of 4 (the U-Net pools twice), got {patch}", path)
    if patch is not None and 2 * crop >= patch:
        raise FormatError(f"segment.crop {crop} leaves nothing of a {patch}-voxel patch", path)
    method = (cfg.get("pick") or {}).get("method")
    if method is not None and method not in METHODS:
        raise FormatError(f"pick.method {method!r} is not one of {', '.join(METHODS)}", path)
    formats = (cfg.get("pick") or {}).get("formats")
    if formats is not None and (not isinstance(formats, list) or not formats):
        raise FormatError(f"pick.formats must be a list of file suffixes, got {formats!r}", path)
    if cfg.get("evaluate") is not None and "truth" not in cfg["evaluate"]:
        raise FormatError("evaluate needs a 'truth' pattern, e.g. truth/{name}.xml", path)


def _inputs(cfg) -> list[Path]:
    base = Path(cfg.get("_base", "."))
    found = []
    for pattern in ([cfg["inputs"]] if isinstance(cfg["inputs"], str) else cfg["inputs"]):
        p = str(pattern if Path(pattern).is_absolute() else base / pattern)
        hits = sorted(glob.glob(p)) or ([p] if Path(p).exists() else [])
        if not hits:
            raise MissingError("no input matches this pattern", p)
        found += [Path(h) for h in hits]
    return found


def run(config, *, client=None, progress=False) -> pd.DataFrame:
    """Run convert -> segment -> pick (-> evaluate) over every input of a config.

    Parameters
    ----------
    config : dict or path
        See the module docstring.
    client : distributed.Client, optional
        Default: ``config["scheduler"]``, else ``config["cluster"]`` (batch jobs, see
        :func:`tomochunk.parallel.client_options`), else an embedded LocalCluster of
        ``config["workers"]``.

    Returns
    -------
    pandas.DataFrame
        One row per tomogram: store, object-list paths, number of picks, and, with
        ``evaluate``, mean precision/recall/F1 over classes.

    Examples
    --------
    >>> run("pipeline.yaml")  # doctest: +SKIP
    """
    cfg = load_config(config) if not isinstance(config, dict) else dict(config)
    if isinstance(config, dict):
        check_config(cfg)
    base = Path(cfg.get("_base", "."))
    outdir = Path(cfg.get("outdir", "out"))
    outdir = outdir if outdir.is_absolute() else base / outdir
    outdir.mkdir(parents=True, exist_ok=True)
    conv = {**DEFAULTS["convert"], **(cfg.get("convert") or {})}
    seg = {**DEFAULTS["segment"], **(cfg.get("segment") or {})}
    pk = {**DEFAULTS["pick"], **(cfg.get("pick") or {})}
    ev = cfg.get("evaluate")
    model = seg.pop("model")
    model = shipped_model(model) if not Path(str(model)).suffix else (
        Path(model) if Path(model).is_absolute() else base / model)
    rows, inputs = [], _inputs(cfg)  # before starting any cluster: bad patterns fail fast
    cp = {"user": "tomochunk", "session": "0", "name": "segmentation", **(cfg.get("copick") or {})}
    project, tomos = project_inputs(inputs, voxel_spacing=cp.get("voxel_spacing"), tomo_type=cp.get("tomo_type"))
    names = output_names(inputs) if project is None else {t.path: t.run for t in tomos}
    tomos = {} if project is None else {t.path: t for t in tomos}
    with client_from_config(cfg, client) as c:
        # TS_01/tomo.mrc and TS_02/tomo.mrc: TS_01_tomo.zarr, TS_02_tomo.zarr, never one tomo.zarr for both
        for src, name in names.items():
            store = outdir / f"{name}.zarr"
            _check_same_source(outdir, name, src)
            if not (store.exists() and is_complete(store)):
                log.info("convert %s", src)
                convert(src, store, progress=progress, **conv)
            labels = store / "labels"
            if not (labels.exists() and is_complete(labels / "classes")):
                log.info("segment %s", store)
                scores = segment(open_volume(store), model, client=c, **seg)
                write_segmentation(scores, store, client=c, progress=progress)
            if src in tomos:
                t = tomos[src]
                dst = project.segmentation_path(t.run, t.voxel_spacing, cp["user"], cp["session"], cp["name"])
                if not (dst.exists() and is_complete(dst)):
                    export_segmentation(project, t, store, user=cp["user"], session=cp["session"], name=cp["name"],
                                        overwrite=True)
            paths = {fmt: outdir / f"{name}.{fmt}" for fmt in pk["formats"]}
            if all(p.exists() for p in paths.values()):
                objects = read_objects(next(iter(paths.values())))
            else:
                objects = _pick(store, pk, name)
                for fmt, p in paths.items():
                    write_objects(objects, p, overwrite=True)  # atomic: temp name, then rename
                if src in tomos:
                    objects.attrs["classes"] = {**project.objects, **(objects.attrs.get("classes") or {})}
                    write_copick(objects, project.overlay, cp["user"], cp["session"], overwrite=True)
            row = {"tomogram": str(src), "store": str(store), "picks": len(objects),
                   **{f"objects_{k}": str(v) for k, v in paths.items()}}
            if ev:
                truth_path = Path(str(ev["truth"]).format(name=name))
                truth_path = truth_path if truth_path.is_absolute() else base / truth_path
                truth = read_objects(truth_path)
                truth["tomo"] = name
                table = evaluate(objects, truth, max_dist=float(ev.get("max_dist", 4)))
                per_class = table.drop(index="all", errors="ignore")
                row.update(precision=float(per_class["precision"].mean()), recall=float(per_class["recall"].mean()),
                           f1=float(per_class["f1"].mean()))
            rows.append(row)
    return pd.DataFrame(rows)


def _pick(store, pk, name) -> pd.DataFrame:
    """Objects from a segmented store, through the one picking dispatch (every ``pick`` method)."""
    kw = {k: v for k, v in pk.items() if k != "formats"}
    return pick_inputs(store, tomo=name, **kw)


def _check_same_source(outdir: Path, name: str, src) -> None:
    """Record which input ``outdir/<name>.*`` belong to; refuse to resume them from another input.

    A rerun skips every stage whose output is complete, so outputs left by another input of the
    same name (another config, files moved between runs, or the file replaced by other data) would
    be reported as this one's. The record is the source's identity (path, size, mtime and a
    sampled checksum: :func:`tomochunk.io._identity.source_identity`, the rule stores use).

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "t.mrc").write_bytes(b"a" * 64)
    >>> _check_same_source(d, "t", d / "t.mrc"); _check_same_source(d, "t", d / "t.mrc")  # same: resumes
    >>> _ = (d / "t.mrc").write_bytes(b"b" * 80)
    >>> _check_same_source(d, "t", d / "t.mrc")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tomochunk.errors.FormatError: ...: outputs t.* were made from .../t.mrc as it was then (changed since: size, mtime or content); remove them or use another outdir
    """
    marker = outdir / f".{name}.source.json"
    here = source_identity(src)
    if marker.exists():
        try:
            before = json.loads(marker.read_text()).get("source")
        except (ValueError, AttributeError):
            before = None
        if isinstance(before, str):  # an older record: the path only
            before = None if before == here["path"] else {"path": before}
        if before is not None and before != here:
            if before.get("path") != here["path"]:
                why = f"{before.get('path')}, not {here['path']}"
            else:
                why = f"{here['path']} as it was then (changed since: size, mtime or content)"
            raise FormatError(f"outputs {name}.* were made from {why}; remove them or use another outdir",
                              outdir)
        if before is not None:
            return
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps({"source": here}))
    os.replace(tmp, marker)
