"""Segmentation written to stores: a tomogram's class scores and label map, into its OME-Zarr store.

:func:`tomochunk.nn.segment.segment` computes the scores; this module writes
them, with the one NGFF writer of :mod:`tomochunk.io.omezarr`, in the store's
own format (NGFF 0.4 on Zarr 2, or 0.5 on Zarr 3).
"""

from __future__ import annotations

import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.diagnostics import ProgressBar

from .._blocks import block_slices
from .._log import get_logger
from ..errors import ExistsError, ShapeError, ValueProblem
from ..io.omezarr import (PROGRESS_FILE, VERSIONS, Progress, graph_paths, group_attrs, jsonable, labels_attrs,
                          mark_complete, multiscales_metadata, open_output, read_multiscale, source_identity,
                          store_version, write_regions)
from ..nn.segment import class_argmax
from ..parallel import current_client

log = get_logger(__name__)

#: where the per-region records of an unfinished segmentation live (inside ``store/labels``)
PROGRESS_DIR = PROGRESS_FILE


def _write_block(block, labels_path, region, levels, dtype, key):
    """Write one storage-aligned region of scores (and of every class level); then record it.

    The scores (cast and compressed) are written from a second thread while this one makes and
    writes the label levels: both release the GIL, and a single-block segmentation waits on this
    task after its network call (1.1-1.35 s against 1.6-1.9 s, 13 x 200 x 256 x 256 float32).
    """
    block = np.asarray(block, dtype=np.float32)
    region = tuple(region)

    def scores():
        write_regions(labels_path, [("scores/0", (slice(None),) + region, block.astype(dtype, copy=False))])

    with ThreadPoolExecutor(1, thread_name_prefix="tomochunk-write") as pool:
        done = pool.submit(scores)
        if levels:
            write_regions(labels_path, _label_levels(class_argmax(block), region, levels))
        done.result()
    Progress(labels_path).record(key)  # once both are written
    return np.zeros((1, 1, 1, 1), np.uint8)


def _label_levels(lab, region, levels):
    """``(array path, region, data)`` of a region's label map at levels 1x, 2x, 4x... (striding)."""
    out = []
    for k in range(levels):
        f = 2 ** k
        sub = lab[::f, ::f, ::f]  # region starts are multiples of the chunk, itself of 2**(levels-1)
        out.append((f"classes/{k}", tuple(slice(r.start // f, r.start // f + n) for r, n in zip(region, sub.shape)),
                    sub))
    return out


def _even_chunks(n, c):
    return tuple(min(c, n - i) for i in range(0, n, c)) or (n,)


def _target(store, ngff):
    """(store path, NGFF version) after checking that ``store`` is, or will be, an OME-Zarr store."""
    store = Path(store)
    if store.exists() and not (store / "zarr.json").is_file() and not (store / ".zgroup").is_file() \
            and not (store.is_dir() and not any(store.iterdir())):
        raise ValueProblem("write_segmentation writes into an OME-Zarr store, and this is not one", store)
    if not store.exists() and store.suffix.lower() != ".zarr":
        raise ValueProblem(f"write_segmentation writes into an OME-Zarr store (a .zarr folder), not "
                           f"{store.suffix or 'a plain path'}", store)
    version = store_version(store, default=str(ngff or "0.4"))
    if ngff is not None and str(ngff) != version:
        raise ValueProblem(f"the store is NGFF {version}; its labels must be too (got ngff={ngff!r})", store)
    if version not in VERSIONS:
        raise ValueProblem(f"ngff must be one of {VERSIONS}, got {ngff!r}")
    return store, version


def _check_image_shape(store, shape, level=0):
    """The labels must cover the store's image (its level ``level``) voxel for voxel; returns the
    image's level count (or None)."""
    try:
        img, meta = read_multiscale(store, 0, check=False)
    except Exception:  # noqa: BLE001 - a store without an image (labels only) has nothing to match
        return None
    if level:
        if not 0 <= level < int(meta.get("levels") or 1):
            raise ShapeError(f"the scores are of level {level}; the store's image has {meta.get('levels')} "
                             "level(s)", store)
        img, meta = read_multiscale(store, level, check=False)
    dims = meta["dims"]
    spatial = tuple(n for n, d in zip(img.shape, dims) if d in ("z", "y", "x"))
    if spatial != tuple(shape):
        at = f" at level {level}" if level else ""
        raise ShapeError(f"labels of shape {tuple(shape)} do not fit the store's image{at} of shape {spatial}",
                         store)
    return meta.get("levels")


def _identity(inputs, attrs):
    """What the scores are computed from: the files their graph reads (``inputs``), and the model."""
    inputs = sorted(str(p) for p in inputs if Path(p).exists())
    model = (attrs.get("segment") or {}).get("model")
    ident = {"inputs": [source_identity(p) for p in inputs]}
    if model and Path(model).exists():
        ident["model"] = source_identity(model)
    return ident


def write_segmentation(scores, store, *, labels=True, dtype="float16", chunks=256, levels=None, overwrite=False,
                       client=None, progress=False, classes=None, ngff=None, level=0):
    """Write score maps and the label map into an OME-Zarr store, chunk by chunk, resumably.

    Layout (NGFF 0.4 on Zarr 2, or 0.5 on Zarr 3: the store's own format)::

        store/labels/            {"labels": ["classes"]} (0.5: under "ome")
        store/labels/classes/    uint8 label image, levels 1x, 2x, 4x (striding), "image-label"
                                 with class names ("properties") and "colors"
        store/labels/scores/     [c, z, y, x] class scores (float16 by default), one level

    Scores computed on a pyramid level of the image (``level=N``, ``tomochunk segment
    --level N``) are written at that level's grid, under the same names: their NGFF
    ``coordinateTransformations`` hold that level's scale (``2**N`` level-0 voxels) and
    translation (the image level's own, half a level-0 voxel per doubling for mean-pooled
    levels), so viewers overlay them on the image, and both groups' attributes record
    ``"image_level": N``. Pickers (:func:`tomochunk.workflows.picking.pick_inputs`) use the
    transformations to give level-0 voxels. One store holds one segmentation: another
    level replaces it (``overwrite``).

    Each Dask block owns whole storage chunks; after writing one, it leaves a record in
    ``labels/.tomochunk_progress``. A rerun after an interruption computes only the
    missing regions, and only when the scores come from the same inputs, model and
    parameters. The completion markers are written last, so a store that was never
    finished is never marked complete.

    Parameters
    ----------
    scores : xarray.DataArray
        ``[c, z, y, x]`` from :func:`tomochunk.segment` (lazy; never gathered on the client).
    store : str or Path
        The tomogram's OME-Zarr store (created if missing; its image, if any, must have the
        scores' spatial shape).
    labels : bool
        Also write the label map (argmax over classes).
    dtype : str
        Score storage dtype.
    chunks : int
        Spatial storage chunk side (even; the label levels use chunk/2, chunk/4).
    levels : int, optional
        Levels of the label pyramid (default: as many as the store's image has, which NGFF 0.5
        validators require, else 3).
    overwrite : bool
        Replace a complete output, or one started from other scores.
    client : distributed.Client, optional
        Where to compute (default: the current Dask scheduler).
    progress : bool
        Show a progress bar (on stderr).
    classes : dict, optional
        ``{label: name}`` for the label image's ``properties`` (default: ``scores.attrs["classes"]``).
    ngff : {"0.4", "0.5"}, optional
        Format of a new store (default 0.4); an existing store keeps its own.
    level : int
        The pyramid level of the store's image the scores were computed on (0: full
        resolution); their ``attrs`` carry that level's ``voxel_size`` and ``origin``
        (as :func:`tomochunk.open_volume` gives them).

    Returns
    -------
    Path
        ``store/labels``.

    Examples
    --------
    >>> write_segmentation(segment(vol, "unet.keras"), "tomo.zarr")  # doctest: +SKIP
    """
    if not isinstance(scores, xr.DataArray):
        scores = xr.DataArray(scores, dims=("c", "z", "y", "x"))
    if scores.ndim != 4:
        raise ShapeError(f"expected [c, z, y, x] scores, got {scores.ndim}D", store)
    store, version = _target(store, ngff)
    data = scores.data if isinstance(scores.data, da.Array) else da.from_array(np.asarray(scores.data))
    lpath = store / "labels"
    n_classes, shape = int(data.shape[0]), tuple(int(s) for s in data.shape[1:])
    level = int(level)
    if level < 0:
        raise ValueProblem(f"level must be >= 0, got {level}", store)
    image_levels = _check_image_shape(store, shape, level)
    levels = max(1, int(levels or (image_levels - level if image_levels else 0) or 3)) if labels else 0
    f = 2 ** max(levels - 1, 0)
    chunks = -(-int(chunks) // f) * f  # label levels need chunk edges aligned at every level
    voxel_size = float(scores.attrs.get("voxel_size") or 1.0)
    origin = scores.attrs.get("origin")
    classes = classes if classes is not None else scores.attrs.get("classes")
    layout = {"shape": [n_classes, *shape], "chunks": chunks, "dtype": np.dtype(dtype).str, "levels": levels}
    params = jsonable({k: v for k, v in scores.attrs.get("segment", {}).items() if k != "model"})
    if level:
        params["image_level"] = level
    inputs = sorted(graph_paths(data))  # walked once: the identity and the aliasing checks use it
    source = _identity(inputs, scores.attrs)

    if overwrite:
        shutil.rmtree(lpath / PROGRESS_DIR, ignore_errors=True)
    if not store.exists():
        zarr.open_group(str(store), mode="w", zarr_format=3 if version == "0.5" else 2)
    lg = zarr.open_group(str(lpath), mode="a", zarr_format=3 if version == "0.5" else 2)
    common = dict(layout=layout, source=source, params=params, overwrite=overwrite, ngff=version, inputs=inputs)
    dims4 = ("c", "z", "y", "x")
    sc = (1,) + tuple(min(chunks, s) for s in shape)
    ms = multiscales_metadata(dims4, voxel_size, 1, name="scores", origin=origin, version=version)
    at = {"image_level": level} if level else None
    out_s = open_output(lpath / "scores", [("0", (n_classes, *shape), sc, dtype, dims4)],
                        attrs=group_attrs(ms, version, extra=at), **common)
    out_c = None
    if labels:
        cl = [tuple(max(1, min(chunks // 2 ** k, math.ceil(s / 2 ** k))) for s in shape) for k in range(levels)]
        shp = [tuple(math.ceil(s / 2 ** k) for s in shape) for k in range(levels)]
        ms = multiscales_metadata(("z", "y", "x"), voxel_size, levels, name="classes", label=True, origin=origin,
                                  version=version)
        out_c = open_output(lpath / "classes", [(str(k), shp[k], cl[k], np.uint8, ("z", "y", "x"))
                                                for k in range(levels)],
                            attrs=group_attrs(ms, version, label=True, classes=classes,
                                              extra={**({"classes": {str(k): v for k, v in classes.items()}}
                                                        if classes else {}), **(at or {})} or None),
                            **common)
    if out_s.complete and (out_c is None or out_c.complete):
        raise ExistsError("segmentation output exists; pass overwrite=True (--overwrite) to replace it", lpath)
    lg.attrs.update(labels_attrs(["classes"] if labels else [], version))

    prog = Progress(lpath)
    done = set(prog.done())
    # every write task owns whole storage chunks of every array
    aligned = data.rechunk(((n_classes,),) + tuple(_even_chunks(s, chunks) for s in shape))
    regions = list(block_slices(aligned.chunks[1:]))
    todo = [(idx, region) for idx, region in regions if ".".join(map(str, idx)) not in done]
    log.info("%s: %d of %d regions to write", lpath, len(todo), len(regions))

    with dask.config.set({"optimization.fuse.active": False}):  # keeps GPU annotations (see PITFALLS)
        blocks = aligned.to_delayed(optimize_graph=False)
        tasks = [dask.delayed(_write_block, pure=False)(blocks[(0,) + idx], str(lpath), region, levels,
                                                        np.dtype(dtype), ".".join(map(str, idx)))
                 for idx, region in todo]
        if tasks:
            _compute(tasks, client, progress)
    # completion markers last: arrays first, then the progress record goes
    mark_complete(lpath / "scores")
    if labels:
        mark_complete(lpath / "classes")
    prog.clear()
    return lpath


def _compute(tasks, client, progress):
    client = current_client(client)
    if client is not None:
        futures = client.compute(tasks)
        if progress:
            from distributed.diagnostics.progressbar import progress as bar  # distributed: heavy

            bar(futures)
        client.gather(futures)  # tiny placeholders only
        return
    if progress:
        with ProgressBar():
            dask.compute(*tasks)
    else:
        dask.compute(*tasks)
