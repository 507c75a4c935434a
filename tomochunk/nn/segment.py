"""Distributed, out-of-core segmentation with a fully convolutional 3D network.

Two tilings.

``tiling="patches"`` (default) reproduces DeepFinder's ``Segment`` (with ``blend="crop"``):

* the volume is normalised (global mean/std by default) and zero-padded by ``crop``
  on every side (further, at the far end, when a side is shorter than a patch);
* along each axis, patches of ``patch_size`` start every ``step = patch_size - 2*crop
  - core_overlap`` voxels (``core_overlap=4`` is DeepFinder's 55-voxel patch overlap at
  crop 25), and one last patch is flush with the far end;
* each patch is predicted and only its core (the patch minus ``crop`` on every side)
  is kept; where cores overlap, they are averaged (``"crop"``) or Gaussian-weighted
  (``"gaussian"``).

  Distributed plan: consecutive patches are grouped into compute blocks (several
  patches per axis), so each block reads its cores plus a margin of ``crop`` only.
  Each block runs all its patches through the network in batches and returns the
  weighted sum of its cores, already divided by the (separable, known in advance) sum
  of weights. Neighbouring blocks share only the thin slabs where cores overlap; those
  are added, everything else is passed through.

  Cost: every patch is predicted whole, so the network runs on about
  ``(patch_size / step)**3`` voxels per output voxel inside the volume (3.4x at patch
  160, crop 25: DeepFinder's own tiling), plus the ``crop`` padding at the faces.

``tiling="blocks"`` runs the network once per Dask block (sized to the workers' memory)
plus a halo of ``crop`` voxels, rounded up to a multiple of 4, towards each neighbour
(``map_overlap`` with no halo at the volume's faces), and keeps the block. Block sides and
halos are multiples of 4 and the first block is ``crop % 4`` voxels shorter, with that many
zeros in front: every window starts at ``-crop`` modulo 4, where DeepFinder's first patch
starts, so all windows pool in one phase and the result does not depend on the block plan
(max |delta| ~2e-5 between plans, from what lies beyond the halo). The network runs on
1.2-2x the volume. The scores are not DeepFinder's: a U-Net with max-pooling depends on
the tiling's phase (DeepFinder's patches start in two), and the faces see the network's
own zero padding instead of ``crop`` voxels of padded zeros.

In both, the model is loaded once per worker process (a cache keyed by path and mtime,
:mod:`tomochunk.nn._cache`) and tasks carry only its path; a Keras model object is shipped
to the workers once, through the scheduler (:mod:`tomochunk.nn._model`). Both size their
work from the worker's memory limit (:mod:`tomochunk.nn._memory`). The patch tiling lives in
:mod:`tomochunk.nn._tiling`, the block tiling in :mod:`tomochunk.nn._blocks_plan`.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from itertools import product
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .._log import get_logger
from ..errors import ShapeError, ValueProblem
from ..io.volume import check_tomogram
from ..ops.normalize import normalize as _normalize
from ..parallel import worker_info
from . import _cache
from ._blocks_plan import block_chunks, block_scores, window_voxels
from ._cache import PRECISIONS
from ._memory import bytes_per_voxel, patch_batch
from ._model import check_model_dims, model_handle, n_classes as _n_classes
from ._tiling import _auto_block_patches, patch_scores
from .models import check_patch_shape

log = get_logger(__name__)

__all__ = ["segment", "labelmap", "write_segmentation", "window_voxels", "get_model", "preload_model"]


def get_model(path, precision="float32"):
    """Load a model once per process (:func:`tomochunk.nn._cache.keras_model`; kept for old callers).

    Examples
    --------
    >>> model = get_model("unet.keras")  # doctest: +SKIP
    """
    return _cache.keras_model(path, precision)


def preload_model(path, precision="float32") -> int:
    """Load the model into this process's cache (e.g. ``client.run(preload_model, path)``); returns the load count."""
    _cache.keras_model(path, precision)
    return _cache.LOADS


def segment(volume, model, *, patch_size=160, crop=25, batch_size=None, blend="crop", normalize="meanstd",
            core_overlap=4, block_patches=None, tiling="patches", block_shape=None, dtype="float32",
            precision="float32", client=None, gpu=None, force=False):
    """Segment a tomogram with a fully convolutional 3D network, lazily and out of core.

    Parameters
    ----------
    volume : numpy, dask or xarray array
        ``[z, y, x]`` tomogram of any shape (sides shorter than a patch are zero-padded).
    model : str, Path or keras.Model
        A ``.keras`` file, DeepFinder ``.h5`` weights (workers load the path, once per
        process), or a Keras model (serialised once and shipped to every worker through the
        scheduler, so workers need no shared file system).
    patch_size : int
        Side of the cubic patches fed to the network, a multiple of 4 (the U-Net pools twice by 2).
    crop : int
        Voxels discarded on every side of each predicted patch.
    batch_size : int, optional
        Patches per network call (default: as many as fit 60% of the smallest worker's
        memory limit less 0.8 GB for TensorFlow, at the model's estimated bytes per voxel,
        and at most 4 Mvoxels or 64 patches).
    blend : {"crop", "gaussian"}
        Average overlapping cores (DeepFinder's behaviour) or weight them with a Gaussian
        (sigma = core/4) centred on each core.
    normalize : {"meanstd", "percentile", None}
        Intensity normalisation before segmenting (default: global mean/std, as DeepFinder;
        the two numbers are computed now, in one pass, unless recorded in the store).
    core_overlap : int
        Voxels by which neighbouring cores overlap (4 = DeepFinder).
    block_patches : int, optional
        Patches per axis in one compute block (default: blocks of about 288 voxels a side,
        smaller where a volume would otherwise have fewer blocks than the cluster has workers).
    tiling : {"patches", "blocks"}
        ``"patches"`` (default) runs DeepFinder's tiling: cubic patches of ``patch_size``,
        cropped and averaged, with scores equal to DeepFinder's ``Segment`` (max |delta|
        ~6e-4). The network then runs on ``(patch_size / step)**3`` (5.6x at patch 160 on
        a 200x256x256 volume) voxels per output voxel.
        ``"blocks"`` runs the network once per Dask block plus a halo of ``crop`` (rounded
        up to a multiple of 4) voxels towards its neighbours (``map_overlap``; none at the volume's faces, where
        the network's own zero padding applies), keeping only the block: 1.2-2x the
        network cost for blocks that fit memory, about 4x less work than patches. Windows
        start where DeepFinder's first patch does (modulo 4), yet its later patches start in
        another pooling phase: scores differ from DeepFinder's by ~3e-3 beyond ``crop`` of
        the faces and ~1.4e-2 within (random weights, our benchmark);
        ``patch_size``, ``blend``, ``core_overlap``, ``batch_size`` and ``block_patches``
        are not used.
    block_shape : int or tuple of 3 ints, optional
        Block sides for ``tiling="blocks"`` (default: the longest side halved until one
        network call fits 60% of a worker's memory limit less 0.8 GB for TensorFlow, at
        about 1 KB per voxel in float32 and 0.5 KB in bfloat16 for the DeepFinder U-Net, and
        every worker has a block). The budget is the worker's host memory: on GPU workers
        pass a ``block_shape`` whose window fits the GPU's memory.
    dtype : {"float32", "float16"}
        Score dtype.
    precision : {"float32", "bfloat16"}
        Arithmetic of the network. ``"bfloat16"`` runs the convolutions in bfloat16
        (Keras ``mixed_bfloat16``; weights and softmax stay float32): about 4.5x faster
        on CPUs with AMX or AVX512-BF16 and on GPUs, with scores that differ from
        float32 by about 1e-3 (labels agree on >99.9% of voxels in our benchmark).
        Slower on CPUs without bfloat16 support.
    client : distributed.Client, optional
        Used to compute the normalisation statistics and to find GPU workers.
    gpu : bool, optional
        Annotate the inference tasks with ``resources={"GPU": 1}`` (default: when a worker
        of the cluster advertises a ``GPU`` resource). Compute the result with
        ``dask.config.set({"optimization.fuse.active": False})``, as
        :func:`write_segmentation` does, or the annotation is lost.
    force : bool
        Segment a volume whose metadata marks it as a label map, with a warning
        (:func:`tomochunk.io.volume.check_tomogram`), instead of refusing it.

    Returns
    -------
    xarray.DataArray
        Lazy ``[c, z, y, x]`` class scores, dims ``("c", "z", "y", "x")``.

    Examples
    --------
    >>> scores = segment(open_volume("tomo.zarr"), "unet.keras", patch_size=160)  # doctest: +SKIP
    >>> write_segmentation(scores, "tomo.zarr")  # doctest: +SKIP
    """
    if precision not in PRECISIONS:
        raise ValueProblem(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if blend not in ("crop", "gaussian"):
        raise ValueProblem(f"blend must be 'crop' or 'gaussian', got {blend!r}")
    if tiling not in ("patches", "blocks"):
        raise ValueProblem(f"tiling must be 'patches' or 'blocks', got {tiling!r}")
    patch, crop, core_overlap = int(patch_size), int(crop), int(core_overlap)
    core = patch - 2 * crop
    if crop < 0 or core < 1:
        raise ValueProblem(f"patch_size {patch} leaves no core after cropping {crop} voxels per side")
    if not 0 <= core_overlap <= core // 2:
        raise ValueProblem(f"core_overlap must be between 0 and half the core ({core // 2}), got {core_overlap}")
    step = core - core_overlap
    if tiling == "patches":
        check_patch_shape(patch, name="patch_size")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueProblem(f"batch_size must be >= 1, got {batch_size}")
    if np.ndim(volume) != 3:
        raise ShapeError(f"expected a 3D [z, y, x] volume, got {np.ndim(volume)}D")
    source = volume.attrs.get("source") if isinstance(volume, xr.DataArray) else None
    if isinstance(volume, xr.DataArray):
        check_tomogram(volume.attrs, source, force)

    norm = _normalize(volume, method=normalize, client=client)
    data = norm.data if isinstance(norm, xr.DataArray) else norm
    shape = tuple(int(s) for s in data.shape)

    handle, keras_model = model_handle(model, client)
    check_model_dims(keras_model, volume.dims if isinstance(volume, xr.DataArray) else None, source)
    workers = worker_info(client)
    if gpu is None:
        gpu = any((wk.get("resources") or {}).get("GPU", 0) > 0 for wk in workers.values())
    ctx = (lambda: dask.annotate(resources={"GPU": 1})) if gpu else contextlib.nullcontext
    if tiling == "blocks":
        n_classes = _n_classes(keras_model, None)
        chunks = block_chunks(shape, crop, block_shape, bytes_per_voxel(keras_model, precision), workers)
        log.info("segment: %d blocks of up to %s voxels; the network runs on %.2fx the volume",
                 math.prod(len(c) for c in chunks), [max(c) for c in chunks],
                 window_voxels(chunks, crop) / math.prod(shape))
        scores = block_scores(data, chunks, handle, crop, n_classes, precision, ctx)
    else:
        n_classes = _n_classes(keras_model, patch)
        batch = int(batch_size or patch_batch(patch, bytes_per_voxel(keras_model, precision), workers))
        log.info("segment: batches of %d patches of %d^3", batch, patch)
        scores = patch_scores(data, shape, handle, patch, crop, core_overlap, blend,
                              block_patches or _auto_block_patches(patch, step), len(workers),
                              n_classes, batch, precision, ctx)
    if np.dtype(dtype) != np.float32:
        scores = scores.astype(dtype)

    if isinstance(volume, xr.DataArray):
        coords = {d: volume.coords[d] for d in volume.dims if d in volume.coords}
        attrs = dict(volume.attrs)
        spatial = tuple(volume.dims)
    else:
        coords, attrs, spatial = {}, {}, ("z", "y", "x")
    coords["c"] = np.arange(n_classes)
    if tiling == "blocks":
        spec = {"tiling": tiling, "block_shape": [max(c) for c in chunks]}
    else:
        spec = {"patch_size": patch, "blend": blend, "core_overlap": core_overlap}
    attrs.update(segment={**spec, "crop": crop, "normalize": normalize, "model": str(handle),
                          "precision": precision})
    return xr.DataArray(scores, dims=("c",) + spatial, coords=coords, attrs=attrs, name="scores")


def labelmap(scores):
    """Lazy argmax over the class axis: ``[c, z, y, x]`` scores to a uint8 ``[z, y, x]`` label map.

    Examples
    --------
    >>> import numpy as np
    >>> labelmap(np.array([[[[0.2]]], [[[0.8]]]])).compute().tolist()
    [[[1]]]
    """
    if isinstance(scores, xr.DataArray):
        axis = scores.dims.index("c") if "c" in scores.dims else 0
        data = scores.data if isinstance(scores.data, da.Array) else da.from_array(scores.data)
        out = data.map_blocks(_argmax, axis, drop_axis=axis, dtype=np.uint8) if data.numblocks[axis] == 1 \
            else da.argmax(data, axis=axis).astype(np.uint8)
        dims = tuple(d for i, d in enumerate(scores.dims) if i != axis)
        coords = {d: scores.coords[d] for d in dims if d in scores.coords}
        return xr.DataArray(out, dims=dims, coords=coords, attrs=dict(scores.attrs), name="labels")
    data = scores if isinstance(scores, da.Array) else da.from_array(np.asarray(scores))
    if data.ndim != 4:
        raise ShapeError(f"expected [c, z, y, x] scores, got {data.ndim}D")
    if data.numblocks[0] == 1:
        return data.map_blocks(_argmax, 0, drop_axis=0, dtype=np.uint8)
    return da.argmax(data, axis=0).astype(np.uint8)


def _argmax(block, axis):
    return np.argmax(block, axis=axis).astype(np.uint8)


# --- writing ----------------------------------------------------------------------------

PROGRESS_DIR = ".tomochunk_progress.d"


def _create_or_resume(group_path, name, shape, chunks_per_level, dtype, dims, voxel_size, label, layout,
                      overwrite):
    """Open (resume) or create the multiscale group ``group_path/name``; True if it already is complete."""
    import zarr

    from ..io.omezarr import default_compressor, is_complete, multiscales_metadata

    path = Path(group_path) / name
    if path.exists():
        old = zarr.open_group(str(path), mode="r").attrs.asdict().get("tomochunk", {})
        if old.get("layout") != layout:
            raise _exists("an output with another layout exists; pass overwrite=True (--overwrite)", path)
        return zarr.open_group(str(path), mode="r+"), is_complete(path)
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    comp = default_compressor(dtype, 2)
    for k, ch in enumerate(chunks_per_level):
        shp = tuple(s if d == "c" else math.ceil(s / 2 ** k) for s, d in zip(shape, dims))
        g.create_array(str(k), shape=shp, chunks=ch, dtype=dtype, fill_value=0, compressors=comp,
                       chunk_key_encoding={"name": "v2", "separator": "/"}, overwrite=True)
    ms = multiscales_metadata(dims, voxel_size, len(chunks_per_level), name=name, label=label)
    ms["version"] = "0.4"
    attrs = {"multiscales": [ms], "tomochunk": {"complete": False, "layout": layout}}
    if label:
        attrs["image-label"] = {"version": "0.4", "source": {"image": "../../"}}
    g.attrs.update(attrs)
    return g, False


def _exists(msg, path):
    from ..errors import ExistsError

    return ExistsError(msg, path)


def _write_block(block, labels_path, region, levels, dtype, marker):
    """Write one storage-aligned region of scores (and class levels); then record it."""
    import zarr

    block = np.asarray(block, dtype=np.float32)
    z0, y0, x0 = (r.start for r in region)
    root = Path(labels_path)
    scores = zarr.open_array(str(root / "scores" / "0"), mode="r+")
    scores[(slice(None),) + tuple(region)] = block.astype(dtype)
    if levels:
        lab = np.argmax(block, axis=0).astype(np.uint8)
        for k in range(levels):
            f = 2 ** k
            arr = zarr.open_array(str(root / "classes" / str(k)), mode="r+")
            sub = lab[::f, ::f, ::f]
            arr[z0 // f:z0 // f + sub.shape[0], y0 // f:y0 // f + sub.shape[1], x0 // f:x0 // f + sub.shape[2]] = sub
    tmp = Path(str(marker) + ".tmp")
    tmp.write_text("done\n")
    os.replace(tmp, marker)  # the record appears only once the data is on disk
    return np.zeros((1, 1, 1, 1), np.uint8)


def write_segmentation(scores, store, *, labels=True, dtype="float16", chunks=256, levels=3, overwrite=False,
                       client=None, progress=False):
    """Write score maps and the label map into an OME-Zarr store, chunk by chunk, resumably.

    Layout (NGFF 0.4, Zarr 2)::

        store/labels/            {"labels": ["classes"]}
        store/labels/classes/    uint8 label image, levels 1x, 2x, 4x (striding), "image-label"
        store/labels/scores/     [c, z, y, x] class scores (float16 by default), one level

    Each Dask block owns whole storage chunks; after writing one, it leaves a record in
    ``labels/.tomochunk_progress.d``. A rerun after an interruption computes only the
    missing regions. The completion markers (``attrs["tomochunk"]["complete"]``) are written
    last, so a store that was never finished is never marked complete.

    Parameters
    ----------
    scores : xarray.DataArray
        ``[c, z, y, x]`` from :func:`segment` (lazy; never gathered on the client).
    store : str or Path
        The tomogram's OME-Zarr store (created if missing).
    labels : bool
        Also write the label map (argmax over classes).
    dtype : str
        Score storage dtype.
    chunks : int
        Spatial storage chunk side (even; the label levels use chunk/2, chunk/4).
    levels : int
        Levels of the label pyramid.
    overwrite : bool
        Replace a complete (or differently laid out) output.
    client : distributed.Client, optional
        Where to compute (default: the current Dask scheduler).
    progress : bool
        Show a progress bar (on stderr).

    Returns
    -------
    Path
        ``store/labels``.

    Examples
    --------
    >>> write_segmentation(segment(vol, "unet.keras"), "tomo.zarr")  # doctest: +SKIP
    """
    import dask
    import xarray as xr
    import zarr

    from ..io.omezarr import is_complete, jsonable, mark_complete

    if not isinstance(scores, xr.DataArray):
        scores = xr.DataArray(scores, dims=("c", "z", "y", "x"))
    if scores.ndim != 4:
        raise ShapeError(f"expected [c, z, y, x] scores, got {scores.ndim}D", store)
    data = scores.data
    if not hasattr(data, "rechunk"):
        import dask.array as da

        data = da.from_array(np.asarray(data))
    store = Path(store)
    lpath = store / "labels"
    n_classes, shape = int(data.shape[0]), tuple(int(s) for s in data.shape[1:])
    levels = max(1, int(levels)) if labels else 0
    f = 2 ** max(levels - 1, 0)
    chunks = -(-int(chunks) // f) * f  # label levels need chunk edges aligned at every level
    voxel_size = float(scores.attrs.get("voxel_size") or 1.0)
    layout = {"shape": [n_classes, *shape], "chunks": chunks, "dtype": np.dtype(dtype).str, "levels": levels,
              "segment": jsonable({k: v for k, v in scores.attrs.get("segment", {}).items() if k != "model"})}

    if lpath.exists() and (store / "labels" / "scores").exists():
        if overwrite:
            for sub in ("scores", "classes", PROGRESS_DIR):
                shutil.rmtree(lpath / sub, ignore_errors=True)
        elif is_complete(lpath / "scores") and (not labels or is_complete(lpath / "classes")):
            raise _exists("segmentation output exists; pass overwrite=True (--overwrite) to replace it", lpath)
    if not store.exists():
        zarr.open_group(str(store), mode="w", zarr_format=2)
    lg = zarr.open_group(str(lpath), mode="a", zarr_format=2)
    lg.attrs.update({"labels": ["classes"] if labels else []})

    sc = (1,) + tuple(min(chunks, s) for s in shape)
    _create_or_resume(lpath, "scores", (n_classes, *shape), [sc], np.dtype(dtype), ("c", "z", "y", "x"),
                      voxel_size, False, layout, overwrite)
    if labels:
        cl = [tuple(max(1, min(chunks // 2 ** k, math.ceil(s / 2 ** k))) for s in shape) for k in range(levels)]
        _create_or_resume(lpath, "classes", shape, cl, np.uint8, ("z", "y", "x"), voxel_size, True, layout,
                          overwrite)
    prog = lpath / PROGRESS_DIR
    prog.mkdir(exist_ok=True)
    done = {p.name for p in prog.iterdir() if not p.name.endswith(".tmp")}

    # every write task owns whole storage chunks of every array
    aligned = data.rechunk(((n_classes,),) + tuple(_even_chunks(s, chunks) for s in shape))
    grid = [range(len(c)) for c in aligned.chunks[1:]]
    offsets = [np.cumsum((0,) + c) for c in aligned.chunks[1:]]
    todo = [idx for idx in product(*grid) if ".".join(map(str, idx)) not in done]
    log.info("%s: %d of %d regions to write", lpath, len(todo), math.prod(len(g) for g in grid))

    with dask.config.set({"optimization.fuse.active": False}):  # keeps GPU annotations (see PITFALLS)
        blocks = aligned.to_delayed(optimize_graph=False)
        tasks = []
        for idx in todo:
            region = tuple(slice(int(o[i]), int(o[i + 1])) for o, i in zip(offsets, idx))
            marker = prog / ".".join(map(str, idx))
            tasks.append(dask.delayed(_write_block, pure=False)(blocks[(0,) + idx], str(lpath), region, levels,
                                                               np.dtype(dtype), str(marker)))
        if tasks:
            _compute(tasks, client, progress)
    # completion markers last: arrays first, then the labels group
    mark_complete(lpath / "scores")
    if labels:
        mark_complete(lpath / "classes")
    shutil.rmtree(prog, ignore_errors=True)
    return lpath


def _even_chunks(n, c):
    return tuple(min(c, n - i) for i in range(0, n, c)) or (n,)


def _compute(tasks, client, progress):
    import dask

    if client is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
    if client is not None:
        futures = client.compute(tasks)
        if progress:
            from distributed.diagnostics.progressbar import progress as bar

            bar(futures)
        client.gather(futures)  # tiny placeholders only
        return
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            dask.compute(*tasks)
    else:
        dask.compute(*tasks)


