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

In both, the model is loaded once per worker process (a cache keyed by path and mtime)
and tasks carry only its path.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np

from .._log import get_logger
from ..errors import MissingError, ShapeError, ValueProblem
from . import _cache
from ._cache import cached

log = get_logger(__name__)

# --- model cache (one load per worker process) --------------------------------------

def get_model(path, precision="float32"):
    """Load a model once per process; later calls with the same file (path and mtime) reuse it.

    ``precision="bfloat16"`` gives the same weights under Keras' ``mixed_bfloat16``
    policy (convolutions in bfloat16, softmax in float32).

    Examples
    --------
    >>> model = get_model("unet.keras")  # doctest: +SKIP
    """
    if precision == "float32":
        return cached(path, _load)
    return cached(path, lambda p: _in_precision(_load(p), precision, p), variant=precision)


def preload_model(path, precision="float32") -> int:
    """Load the model into this process's cache (e.g. ``client.run(preload_model, path)``); returns the load count."""
    get_model(path, precision)
    return _cache.LOADS


PRECISIONS = ("float32", "bfloat16")


def _in_precision(model, precision, path):
    from .models import with_dtype

    try:
        return with_dtype(model, "mixed_" + precision)
    except Exception as exc:
        raise ValueProblem(f"precision={precision!r} needs a DeepFinder U-Net model ({exc})", path) from None


def _load(path):
    from .models import load_model

    return load_model(path)


_TMP_DIRS: list = []


def _model_path(model) -> str:
    """A path workers can load: the given path, or the Keras model saved to a temporary ``.keras``."""
    if isinstance(model, (str, os.PathLike)):
        p = Path(model)
        if not p.exists():
            raise MissingError("no such model file", p)
        return str(p.resolve())
    if not hasattr(model, "predict_on_batch"):
        raise ValueProblem(f"model must be a path or a Keras model, got {type(model).__name__}")
    d = tempfile.mkdtemp(prefix="tomochunk-model-")
    if not _TMP_DIRS:
        atexit.register(lambda: [shutil.rmtree(x, ignore_errors=True) for x in _TMP_DIRS])
    _TMP_DIRS.append(d)
    path = os.path.join(d, "model.keras")
    from .models import save_model

    save_model(model, path)
    _cache.put(path, model)  # this process already has it
    return path


def _n_classes(model, patch_size):
    shape = tuple(model.output_shape) if hasattr(model, "output_shape") else None
    if not shape or shape[-1] is None:
        raise ValueProblem("cannot tell the number of classes from the model's output shape")
    ins = tuple(model.input_shape)
    fixed = [s for s in ins[1:4] if s is not None]
    if fixed and patch_size is None:
        raise ValueProblem(f"tiling='blocks' needs a network that takes any input size; this one takes {ins[1:4]}")
    if fixed and any(s != patch_size for s in fixed):
        raise ValueProblem(f"the model takes patches of {ins[1:4]}, but patch_size={patch_size}")
    return int(shape[-1])


# --- tiling plan ------------------------------------------------------------------------

@dataclass
class _Axis:
    n: int                 # voxels of the volume along this axis
    length: int            # padded length
    starts: list           # patch starts in padded coordinates
    groups: list           # lists of patch indices, one per compute block
    norm: np.ndarray       # 1 / sum of core weights, per padded voxel


def _weights(core, blend):
    if blend == "crop":
        return np.ones(core, np.float64)
    sigma = core / 4.0
    d = np.arange(core) - (core - 1) / 2.0
    return np.exp(-0.5 * (d / sigma) ** 2)


def _axis_plan(n, patch, crop, core_overlap, block_patches, w):
    length = max(n + 2 * crop, patch)
    step = patch - 2 * crop - core_overlap
    starts = list(range(0, length - patch, step))
    if not starts or starts[-1] < length - patch:
        starts.append(length - patch)
    k = max(1, int(block_patches))
    groups = [list(range(i, min(i + k, len(starts)))) for i in range(0, len(starts), k)]
    if k > 1 and len(groups) > 1 and len(groups[-1]) == 1:  # the flush last patch may overlap a lot:
        last = groups.pop()                      # keep it with its neighbour, so only neighbours share slabs
        groups[-1] = groups[-1] + last
    core = patch - 2 * crop
    total = np.zeros(length, np.float64)
    for s in starts:
        total[s + crop:s + crop + core] += w
    with np.errstate(divide="ignore"):
        norm = np.where(total > 0, 1.0 / total, 0.0)
    return _Axis(n, length, starts, groups, norm)


def _region(ax, g, patch, crop):
    """Padded-coordinate region [lo, hi) of the cores of group g, and its input range."""
    idx = ax.groups[g]
    lo, hi = ax.starts[idx[0]] + crop, ax.starts[idx[-1]] + patch - crop
    return lo, hi, lo - crop, hi + crop


# --- worker side ------------------------------------------------------------------------

def _predict_block(block, model_path, patch, crop, local_starts, norms, w, n_classes, batch_size,
                   precision="float32"):
    """Weighted sum of the cores of every patch in ``block``, divided by the global weight sums."""
    model = get_model(model_path, precision)
    block = np.asarray(block, dtype=np.float32)
    core = patch - 2 * crop
    region = tuple(b - 2 * crop for b in block.shape)
    out = np.zeros((n_classes,) + region, np.float32)
    w3 = None
    if np.any(w != 1.0):
        w3 = (w[:, None, None] * w[None, :, None] * w[None, None, :]).astype(np.float32)
    coords = list(product(*local_starts))
    for b0 in range(0, len(coords), batch_size):
        batch = coords[b0:b0 + batch_size]
        x = np.stack([block[z:z + patch, y:y + patch, xx:xx + patch] for z, y, xx in batch])[..., None]
        pred = _run(model, x)
        for (z, y, xx), p in zip(batch, pred):
            c = p[crop:crop + core, crop:crop + core, crop:crop + core, :]
            c = np.moveaxis(c, -1, 0)
            if w3 is not None:
                c = c * w3
            out[:, z:z + core, y:y + core, xx:xx + core] += c
    nz, ny, nx = (np.asarray(v, np.float32) for v in norms)
    out *= nz[:, None, None]
    out *= ny[None, :, None]
    out *= nx[None, None, :]
    return out


def _run(model, x):
    try:
        y = model.predict_on_batch(x)
    except AttributeError:  # pragma: no cover - a bare callable
        y = model(x)
    return np.asarray(y, dtype=np.float32)


# --- client side ------------------------------------------------------------------------

def _workers(client) -> dict:
    """The scheduler's worker records ({} without a distributed client)."""
    if client is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            return {}
    try:
        return client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # older distributed
        return client.scheduler_info()["workers"]


def _plan_axes(shape, patch, crop, core_overlap, k, w, min_blocks):
    """Axis plans with ``k`` patches per block and axis, fewer along the longest groups until
    there are at least ``min_blocks`` blocks (one per worker), so no worker idles on a small volume."""
    ks = [k] * len(shape)
    while True:
        axes = [_axis_plan(n, patch, crop, core_overlap, kk, w) for n, kk in zip(shape, ks)]
        if math.prod(len(ax.groups) for ax in axes) >= min_blocks:
            return axes
        sizes = [max(len(g) for g in ax.groups) for ax in axes]
        a = int(np.argmax(sizes))
        if sizes[a] <= 1:
            return axes
        ks[a] = min(ks[a], sizes[a]) - 1


def _auto_batch(patch):
    return int(max(1, min(64, (1 << 22) // patch ** 3)))


def _auto_block_patches(patch, step):
    return max(1, (288 - patch) // step + 1)


def segment(volume, model, *, patch_size=160, crop=25, batch_size=None, blend="crop", normalize="meanstd",
            core_overlap=4, block_patches=None, tiling="patches", block_shape=None, dtype="float32",
            precision="float32", client=None, gpu=None):
    """Segment a tomogram with a fully convolutional 3D network, lazily and out of core.

    Parameters
    ----------
    volume : numpy, dask or xarray array
        ``[z, y, x]`` tomogram of any shape (sides shorter than a patch are zero-padded).
    model : str, Path or keras.Model
        A ``.keras`` file, DeepFinder ``.h5`` weights, or a Keras model (saved to a temporary
        ``.keras`` file so that workers load it by path; on a multi-machine cluster pass a
        path on a shared file system instead).
    patch_size : int
        Side of the cubic patches fed to the network (a multiple of 4 for the DeepFinder U-Net).
    crop : int
        Voxels discarded on every side of each predicted patch.
    batch_size : int, optional
        Patches per network call (default: as many as fit in 4 Mvoxels, at most 64).
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

    Returns
    -------
    xarray.DataArray
        Lazy ``[c, z, y, x]`` class scores, dims ``("c", "z", "y", "x")``.

    Examples
    --------
    >>> scores = segment(open_volume("tomo.zarr"), "unet.keras", patch_size=160)  # doctest: +SKIP
    >>> write_segmentation(scores, "tomo.zarr")  # doctest: +SKIP
    """
    import dask
    import dask.array as da
    import xarray as xr

    from ..ops.normalize import normalize as _normalize

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
    if np.ndim(volume) != 3:
        raise ShapeError(f"expected a 3D [z, y, x] volume, got {np.ndim(volume)}D")

    norm = _normalize(volume, method=normalize, client=client)
    data = norm.data if isinstance(norm, xr.DataArray) else norm
    shape = tuple(int(s) for s in data.shape)

    model_path = _model_path(model)
    keras_model = model if not isinstance(model, (str, os.PathLike)) else get_model(model_path)
    workers = _workers(client)
    if gpu is None:
        gpu = any((wk.get("resources") or {}).get("GPU", 0) > 0 for wk in workers.values())
    ctx = (lambda: dask.annotate(resources={"GPU": 1})) if gpu else contextlib.nullcontext
    if tiling == "blocks":
        n_classes = _n_classes(keras_model, None)
        chunks = _block_chunks(shape, crop, block_shape, _bytes_per_voxel(keras_model, precision), workers)
        log.info("segment: %d blocks of up to %s voxels; the network runs on %.2fx the volume",
                 math.prod(len(c) for c in chunks), [max(c) for c in chunks],
                 window_voxels(chunks, crop) / math.prod(shape))
        scores = _block_scores(data, chunks, model_path, crop, n_classes, precision, ctx)
    else:
        n_classes = _n_classes(keras_model, patch)
        scores = _patch_scores(data, shape, model_path, patch, crop, core_overlap, blend,
                               block_patches or _auto_block_patches(patch, step), len(workers),
                               n_classes, int(batch_size or _auto_batch(patch)), precision, ctx)
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
    attrs.update(segment={**spec, "crop": crop, "normalize": normalize, "model": str(model_path),
                          "precision": precision})
    return xr.DataArray(scores, dims=("c",) + spatial, coords=coords, attrs=attrs, name="scores")


def _patch_scores(data, shape, model_path, patch, crop, core_overlap, blend, k, n_workers, n_classes,
                  batch_size, precision, annotate):
    """DeepFinder's patch tiling: lazy ``[c, z, y, x]`` scores (see the module docstring).
    ``annotate()`` is the context (GPU resources) for the network tasks only."""
    import dask
    import dask.array as da

    w = _weights(patch - 2 * crop, blend)
    axes = _plan_axes(shape, patch, crop, core_overlap, k, w, n_workers)

    # zero padding after normalisation, as DeepFinder does
    pad = [(crop, ax.length - ax.n - crop) for ax in axes]
    padded = da.pad(data, pad, mode="constant", constant_values=0)

    # one input block per group of patches: cores plus `crop` on each side
    ranges = [[_region(ax, g, patch, crop) for g in range(len(ax.groups))] for ax in axes]
    pieces = [[[padded[rz[2]:rz[3], ry[2]:ry[3], rx[2]:rx[3]] for rx in ranges[2]] for ry in ranges[1]]
              for rz in ranges[0]]
    ext = da.block(pieces)
    ext = ext.rechunk(tuple(tuple(r[3] - r[2] for r in rr) for rr in ranges))

    def run_block(block, block_id=None):
        gs = block_id[1:]
        rs = [ranges[a][gs[a]] for a in range(3)]
        starts = [[axes[a].starts[i] - rs[a][2] for i in axes[a].groups[gs[a]]] for a in range(3)]
        norms = [axes[a].norm[rs[a][0]:rs[a][1]] for a in range(3)]
        return _predict_block(block[0], model_path, patch, crop, starts, norms, w, n_classes, batch_size,
                              precision)

    out_chunks = ((n_classes,),) + tuple(tuple(r[1] - r[0] for r in rr) for rr in ranges)
    name = f"segment-{dask.base.tokenize(data, model_path, os.path.getmtime(model_path), patch, crop, blend, core_overlap, [ax.groups for ax in axes], batch_size, precision)}"
    ext = ext[None]
    with annotate():
        scores = da.map_blocks(run_block, ext, chunks=out_chunks, dtype=np.float32, name=name,
                               meta=np.empty((0, 0, 0, 0), np.float32))

    # add the thin slabs where neighbouring blocks' cores overlap; crop the padding
    for a, (ax, rr) in enumerate(zip(axes, ranges)):
        scores = _overlap_add(scores, a + 1, rr, crop, crop + ax.n)
    return scores


# --- block tiling: one network call per block plus a halo ---------------------------------

POOL = 4  # the U-Net pools twice by 2: window sides must be multiples of 4
MEMORY_FRACTION = 0.6  # of a worker's memory limit, for one network call on a window
FRAMEWORK_BYTES = 0.8e9  # TensorFlow and the libraries in a worker (0.7 GB measured), outside the budget


def _bytes_per_voxel(model, precision):
    """Peak memory of one network call per input voxel, over-estimated: 0.82 KB (float32) and
    0.46 KB (bfloat16) were measured above the process base for DeepFinder's (32, 48, 64) filters,
    isotropic or anisotropic; this gives 1.02 and 0.54 KB (7.5 x first-level filters x itemsize)."""
    f0 = next((int(layer.filters) for layer in model.layers if hasattr(layer, "filters")), 32)
    return 7.5 * f0 * (2 if precision == "bfloat16" else 4) + 64


def _memory_budget(workers):
    """Bytes one window may take: a fraction of the smallest worker memory limit (of the free
    RAM shared by this machine's cores without a cluster), less what TensorFlow itself holds."""
    limits = [int(wk.get("memory_limit") or 0) for wk in workers.values()]
    if limits and min(limits) > 0:
        total = min(limits)
    else:
        import psutil

        total = psutil.virtual_memory().available / max(1, len(workers) or os.cpu_count() or 1)
    return max(MEMORY_FRACTION * total - FRAMEWORK_BYTES, 0.1 * total)


def _block_chunks(shape, crop, block_shape, bytes_per_voxel, workers):
    """Block sides (multiples of 4): ``block_shape`` rounded up, or the longest side halved until
    one window (block plus a halo per inner side) fits the memory budget and every worker has a block."""
    if block_shape is not None:
        bs = (int(block_shape),) * 3 if np.isscalar(block_shape) else tuple(int(b) for b in block_shape)
        if len(bs) != 3 or min(bs) < 1:
            raise ValueProblem(f"block_shape must be one or 3 positive integers, got {block_shape!r}")
        return tuple(_axis_blocks(n, _up4(b), crop) for n, b in zip(shape, bs))
    max_vox = _memory_budget(workers) / bytes_per_voxel
    halo = _halo(crop)
    sides = list(shape)

    def window(a):
        n = math.ceil(shape[a] / sides[a])
        return sides[a] + (0 if n == 1 else 2 * halo)

    while True:
        vox = math.prod(window(a) for a in range(3))
        blocks = math.prod(math.ceil(n / s) for n, s in zip(shape, sides))
        if vox <= max_vox and blocks >= max(1, len(workers)):
            break
        a = int(np.argmax(sides))
        if sides[a] <= max(2 * halo, POOL):
            break
        sides[a] = _up4(math.ceil(sides[a] / 2))
    if math.prod(window(a) for a in range(3)) > max_vox:
        log.warning("segment: windows of %s voxels exceed the memory budget (%.1f GB)",
                    [window(a) for a in range(3)], max_vox * bytes_per_voxel / 1e9)
    return tuple(_axis_blocks(n, s, crop) for n, s in zip(shape, sides))


def _axis_blocks(n, side, crop):
    """Blocks of ``side`` along an axis of ``n``, the first ``crop % 4`` shorter (see
    :func:`_predict_window`); a last one thinner than the halo joins its neighbour."""
    first = min(n, side - crop % POOL)
    c = [first] + list(_even_chunks(n - first, side) if n > first else ())
    if len(c) > 1 and c[-1] < _halo(crop):
        last = c.pop()
        c[-1] += last
    return tuple(c)


def window_voxels(chunks, crop):
    """Voxels the network runs on for ``tiling="blocks"`` with these block chunks: every block
    plus its halos and lead, padded to multiples of 4 (over the volume's voxels: the tiling overhead).

    Examples
    --------
    >>> window_voxels(((99, 101), (256,), (256,)), crop=25)
    17576000
    """
    halo, lead = _halo(crop), crop % POOL
    sides = []
    for c in chunks:
        w = [n + (halo if i else lead) + halo * (i < len(c) - 1) for i, n in enumerate(c)]
        sides.append([_up4(v) for v in w])
    return int(sum(math.prod(t) for t in product(*sides)))


def _up4(v):
    """``v`` rounded up to a multiple of 4 (``POOL``)."""
    return -(-int(v) // POOL) * POOL


def _halo(crop):
    """Context voxels per inner block side: ``crop`` rounded up to a multiple of 4."""
    return _up4(crop)


def _block_scores(data, chunks, model_path, crop, n_classes, precision, annotate):
    """Lazy ``[c, z, y, x]`` scores, one network call per block of ``chunks`` plus its halo
    (``annotate()``: the context for the network tasks)."""
    import dask
    import dask.array as da

    data = data.rechunk(chunks)
    halo = _halo(crop)
    depth = {a: (halo if len(c) > 1 else 0) for a, c in enumerate(data.chunks)}
    if any(min(c) < depth[a] for a, c in enumerate(data.chunks)):  # block_shape below the halo
        raise ValueProblem(f"blocks {tuple(min(c) for c in data.chunks)} are thinner than the halo "
                           f"({halo} voxels): use a larger block_shape")
    ext = da.overlap.overlap(data, depth=depth, boundary="none")
    nblocks = data.numblocks

    def run_block(block, block_id=None):
        ids = block_id[1:]  # after the new class axis
        inner = [(ids[a] > 0 and depth[a] > 0, ids[a] < nblocks[a] - 1 and depth[a] > 0) for a in range(3)]
        return _predict_window(block, model_path, depth, inner, crop % POOL, precision)

    name = f"segment-blocks-{dask.base.tokenize(data, model_path, os.path.getmtime(model_path), crop, precision)}"
    with annotate():
        return da.map_blocks(run_block, ext, new_axis=0, chunks=((n_classes,),) + data.chunks,
                             dtype=np.float32, name=name, meta=np.empty((0, 0, 0, 0), np.float32))


def _predict_window(block, model_path, depth, inner, lead, precision):
    """Scores of a block's core from one network call on the block and its halo.

    ``inner[a] = (low, high)``: which sides of axis ``a`` carry a halo of ``depth[a]``
    voxels. Halos and inner blocks are multiples of 4 and the first block, ``lead = crop % 4``
    voxels shorter, gets ``lead`` zeros in front: every window starts at a volume coordinate
    of ``-crop`` modulo 4, where DeepFinder's first patch starts, so the U-Net pools in one
    phase everywhere (no seams between blocks) and in the phase of DeepFinder's first patch.
    Far faces are zero-padded to a multiple of 4.
    """
    model = get_model(model_path, precision)
    x = np.asarray(block, dtype=np.float32)
    front = [0 if lo else lead for lo, _ in inner]
    pad = [(f, (-(f + n)) % POOL) for f, n in zip(front, x.shape)]
    if any(p != (0, 0) for p in pad):
        x = np.pad(x, pad)
    y = _run(model, x[None, ..., None])[0]
    core = tuple(slice(f + (depth[a] if lo else 0), f + n - (depth[a] if hi else 0))
                 for a, ((lo, hi), n, f) in enumerate(zip(inner, block.shape, front)))
    return np.ascontiguousarray(np.moveaxis(y[core], -1, 0))


def _overlap_add(arr, axis, regions, lo_keep, hi_keep):
    """Collapse the per-block layout along ``axis`` to volume coordinates [lo_keep, hi_keep).

    ``regions[g] = (lo, hi, ...)`` is block g's padded-coordinate extent; blocks sit one
    after another in ``arr``. Intervals covered by two blocks are summed.
    """
    import dask.array as da

    offsets = np.cumsum([0] + [r[1] - r[0] for r in regions])
    cuts = sorted({lo_keep, hi_keep} | {v for r in regions for v in r[:2] if lo_keep < v < hi_keep})
    parts = []
    for p, q in zip(cuts[:-1], cuts[1:]):
        acc = None
        for g, r in enumerate(regions):
            if r[0] <= p and q <= r[1]:
                idx = [slice(None)] * arr.ndim
                idx[axis] = slice(offsets[g] + p - r[0], offsets[g] + q - r[0])
                piece = arr[tuple(idx)]
                acc = piece if acc is None else acc + piece
        parts.append(acc)
    return da.concatenate(parts, axis=axis) if len(parts) > 1 else parts[0]


def labelmap(scores):
    """Lazy argmax over the class axis: ``[c, z, y, x]`` scores to a uint8 ``[z, y, x]`` label map.

    Examples
    --------
    >>> import numpy as np
    >>> labelmap(np.array([[[[0.2]]], [[[0.8]]]])).compute().tolist()
    [[[1]]]
    """
    import dask.array as da
    import xarray as xr

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
