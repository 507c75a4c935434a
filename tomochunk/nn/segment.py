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
from ._blocks_plan import block_chunks, block_scores, largest_window, window_voxels
from ._ensemble import ensemble_handle
from ._memory import block_memory, bytes_per_voxel, patch_batch, slab_voxels
from ._model import check_model_dims, n_classes as _n_classes
from ._predict import PRECISIONS, resolve_precision
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
            precision="float32", client=None, gpu=None, tta=False, force=False):
    """Segment a tomogram with a fully convolutional 3D network, lazily and out of core.

    Parameters
    ----------
    volume : numpy, dask or xarray array
        ``[z, y, x]`` tomogram of any shape (sides shorter than a patch are zero-padded).
    model : str, Path or keras.Model, or a list of them
        A ``.keras`` file, DeepFinder ``.h5`` weights (workers load the path, once per
        process), or a Keras model (serialised once and shipped to every worker through the
        scheduler, so workers need no shared file system). A list is an ensemble: every
        network task runs each model on the same input and averages the scores.
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
        Block sides for ``tiling="blocks"`` (default: the plan whose windows cover the fewest
        voxels, among those where one network call fits 60% of a worker's memory limit less
        0.8 GB for TensorFlow, at about 1 KB per voxel in float32 and 0.5 KB in bfloat16 for
        the DeepFinder U-Net, and every worker has a block). The budget is the worker's host memory: on GPU workers
        pass a ``block_shape`` whose window fits the GPU's memory.
    dtype : {"float32", "float16"}
        Score dtype.
    precision : {"float32", "bfloat16", "auto"}
        Arithmetic of the network (``"auto"``: bfloat16 on GPU workers and on CPUs whose
        ``/proc/cpuinfo`` lists ``amx_bf16`` or ``avx512_bf16``, else float32). ``"bfloat16"`` runs the convolutions in bfloat16
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

    tta : {False, True, "all", "xy"}
        Test-time augmentation: average the scores over the 8 flips of z, y, x (``"xy"``: the
        4 of y, x) inside each network task, so the volume is read once; the network time
        grows by the number of flips (8x or 4x), times the number of models.

    Returns
    -------
    xarray.DataArray
        Lazy ``[c, z, y, x]`` class scores, dims ``("c", "z", "y", "x")``.

    Examples
    --------
    >>> scores = segment(open_volume("tomo.zarr"), "unet.keras", patch_size=160)  # doctest: +SKIP
    >>> write_segmentation(scores, "tomo.zarr")  # doctest: +SKIP
    """
    if precision not in PRECISIONS + ("auto",):
        raise ValueProblem(f"precision must be one of {PRECISIONS + ('auto',)}, got {precision!r}")
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

    shape = tuple(int(s) for s in np.shape(volume))
    handle, net = ensemble_handle(model, client, tta)
    check_model_dims(net, volume.dims if isinstance(volume, xr.DataArray) else None, source)
    workers = worker_info(client)
    if gpu is None:
        gpu = any((wk.get("resources") or {}).get("GPU", 0) > 0 for wk in workers.values())
    ctx = (lambda: dask.annotate(resources={"GPU": 1})) if gpu else contextlib.nullcontext
    precision = resolve_precision(precision, gpu)
    if tiling == "blocks":
        planned, held, per_slab = block_memory(net, precision)
        chunks = block_chunks(shape, crop, block_shape, planned, workers)
        volume = _in_chunks(volume, chunks)

    norm = _normalize(volume, method=normalize, client=client)
    data = norm.data if isinstance(norm, xr.DataArray) else norm

    if tiling == "blocks":
        n_classes = _n_classes(net, None)
        slab = slab_voxels(largest_window(chunks, crop), held, per_slab, workers)
        log.info("segment: %d blocks of up to %s voxels; the network runs on %.2fx the volume",
                 math.prod(len(c) for c in chunks), [max(c) for c in chunks],
                 window_voxels(chunks, crop) / math.prod(shape))
        scores = block_scores(data, chunks, handle, crop, n_classes, precision, ctx, slab)
    else:
        n_classes = _n_classes(net, patch)
        batch = int(batch_size or patch_batch(patch, bytes_per_voxel(net, precision), workers))
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


def _in_chunks(volume, chunks):
    """``volume`` (numpy, dask or xarray) as a dask-backed array in the block tiling's chunks, before
    it is normalised: each block is then normalised in one task, not in one task per storage chunk
    followed by a merge (64 + 64 tasks of 64^3 and a merge for one 200 x 256 x 256 block).

    Examples
    --------
    >>> _in_chunks(np.zeros((8, 6, 4)), ((4, 4), (6,), (4,))).chunks
    ((4, 4), (6,), (4,))
    """
    if isinstance(volume, xr.DataArray):
        data = volume.data.rechunk(chunks) if isinstance(volume.data, da.Array) \
            else da.from_array(np.asarray(volume.data), chunks=chunks)
        return volume.copy(data=data)
    if isinstance(volume, da.Array):
        return volume.rechunk(chunks)
    return da.from_array(np.asarray(volume), chunks=chunks)


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
        out = data.map_blocks(class_argmax, axis, drop_axis=axis, dtype=np.uint8) if data.numblocks[axis] == 1 \
            else da.argmax(data, axis=axis).astype(np.uint8)
        dims = tuple(d for i, d in enumerate(scores.dims) if i != axis)
        coords = {d: scores.coords[d] for d in dims if d in scores.coords}
        return xr.DataArray(out, dims=dims, coords=coords, attrs=dict(scores.attrs), name="labels")
    data = scores if isinstance(scores, da.Array) else da.from_array(np.asarray(scores))
    if data.ndim != 4:
        raise ShapeError(f"expected [c, z, y, x] scores, got {data.ndim}D")
    if data.numblocks[0] == 1:
        return data.map_blocks(class_argmax, 0, drop_axis=0, dtype=np.uint8)
    return da.argmax(data, axis=0).astype(np.uint8)


def class_argmax(block, axis=0):
    """``np.argmax(block, axis).astype(np.uint8)``, as a running maximum over the classes: one
    pass per class over contiguous planes, about half the time of ``np.argmax`` over the first
    axis of a ``[c, z, y, x]`` block (0.27 s against 0.55 s on 13 x 176 x 192 x 192 float32).
    Ties go to the lower class, as with ``np.argmax``.

    Examples
    --------
    >>> import numpy as np
    >>> class_argmax(np.array([[0.2, 0.5, 0.1], [0.8, 0.5, 0.0], [0.0, 0.0, 0.9]])).tolist()
    [1, 0, 2]
    """
    block = np.asarray(block)
    if axis != 0 or block.shape[0] > 255 or block.dtype.kind not in "fiu":
        return np.argmax(block, axis=axis).astype(np.uint8)
    best = block[0].copy()
    lab = np.zeros(best.shape, np.uint8)
    for c in range(1, block.shape[0]):
        better = block[c] > best
        lab[better] = c
        np.maximum(best, block[c], out=best)
    if block.dtype.kind == "f" and np.isnan(best).any():   # np.argmax returns the first NaN: keep that rule
        nan = np.isnan(block).any(axis=0)
        lab[nan] = np.argmax(block[:, nan], axis=0).astype(np.uint8)
    return lab


# --- moved: writing the scores into stores is a workflow ---------------------------------

import importlib  # noqa: E402 - only for the lazy forwards below

_MOVED = {"write_segmentation": "tomochunk.workflows.segment", "PROGRESS_DIR": "tomochunk.workflows.segment"}


def __getattr__(name):
    """Lazy forwards for names that moved to a higher layer (importing them here would be a cycle)."""
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _even_chunks(n, c):
    return tuple(min(c, n - i) for i in range(0, n, c)) or (n,)
