"""Multi-feature segmentation: N one-feature models on M tomograms, competition, one label map each.

This is the EMAN2 / Ais workflow (one small network per feature: membranes,
carbon, actin, microtubules, ribosomes...) on the Dask path of the 3D
network. Every (tomogram, model) pair becomes slice-wise prediction tasks
(:func:`tomochunk.nn.slices.segment_slices`); the models' maps of a
tomogram then compete slab by slab and the label slabs are stored, for all
tomograms at once, in **one** distributed computation. Each tomogram's
labels are then written as an OME-Zarr label store (levels 1x, 2x, ...) with
``attrs["classes"] = {label: model title}``. Stores already complete are
skipped, so a rerun after an interruption only does what is missing.

Competition (per voxel, models ``i = 1..N`` with maps ``p_i``)
    1. Ais' emit/absorb (:func:`tomochunk.ops.interactions.compete`): where a
       model marked ``emit`` has a higher value than a model marked ``absorb``,
       the absorbing model's value is set to 0.
    2. Interactions (:func:`tomochunk.ops.interactions.interact`), optional:
       a child map is kept only near (``colocalize``) or away from (``avoid``)
       its thresholded parent map.
    3. EMAN2's argmax against a background threshold: the voxel gets label
       ``1 + argmax_i s_i`` over the models with ``p_i >= threshold_i``, else 0.
       By default ``s_i = p_i`` (EMAN2, Ais). With ``object_weight`` ``w > 0``
       the score is ``s_i = (1 - w) p_i + w * mean(p_i over the object)``,
       where the object is the connected component of ``p_i >= threshold_i``
       holding the voxel: a model's confident, extended object then wins over
       another model's weak, fragmentary response on the same voxels (the
       cross-talk of one-feature models, e.g. a particle model firing on
       filament cross-sections), while voxel scores still draw the boundary
       between touching objects. In :func:`segment_features` objects are
       found per z-slab plus a halo of ``object_halo`` slices.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .._log import get_logger
from .._names import tomo_name
from ..errors import ValueProblem
from .slices import cached_model, model_ref, segment_slices

log = get_logger(__name__)


def object_mean(prob, mask):
    """Each voxel of ``mask`` gets the mean of ``prob`` over its connected component (0 outside).

    Examples
    --------
    >>> object_mean(np.array([0.9, 0.7, 0.0, 0.6]), np.array([1, 1, 0, 1], bool)).astype(float).round(2).tolist()
    [0.8, 0.8, 0.0, 0.6]
    """
    from scipy import ndimage as ndi

    cc, n = ndi.label(mask)
    if n == 0:
        return np.zeros(np.shape(prob), np.float32)
    means = ndi.mean(np.asarray(prob, np.float32), cc, np.arange(1, n + 1))
    return np.concatenate([[0.0], means]).astype(np.float32)[cc]


def compete_maps(probs, thresholds, *, emit=None, absorb=None, object_weight=0.0):
    """Competition of N feature maps: ``uint8`` labels (0 = background, ``i + 1`` = model ``i``).

    Parameters
    ----------
    probs : ndarray
        ``[n, ...]`` probability maps, one per model.
    thresholds : sequence of float
        Per-model background threshold (a voxel is a candidate for model ``i``
        where ``probs[i] >= thresholds[i]``).
    emit, absorb : sequence of bool, optional
        Ais flags: absorbing maps are zeroed where an emitting map is higher.
    object_weight : float
        0 (default): the highest candidate probability wins (EMAN2, Ais).
        ``w`` in (0, 1]: candidates compete with ``(1 - w) p + w * object
        mean of p`` (see the module notes), so confident objects beat weak
        fragments of another model.

    Examples
    --------
    >>> p = np.array([[0.9, 0.2, 0.6], [0.7, 0.1, 0.8]])
    >>> compete_maps(p, [0.5, 0.5]).tolist()
    [1, 0, 2]
    >>> p = np.array([[0.9, 0.9, 0.9, 0.6], [0.0, 0.0, 0.0, 0.7]])   # model 1 fires on a voxel of model 0's object
    >>> compete_maps(p, [0.5, 0.5]).tolist(), compete_maps(p, [0.5, 0.5], object_weight=0.5).tolist()
    ([1, 1, 1, 2], [1, 1, 1, 1])
    """
    p = np.array(probs, dtype=np.float32, copy=True)
    n = p.shape[0]
    if n > 254:
        raise ValueProblem(f"at most 254 models compete in a uint8 label map, got {n}")
    thr = np.asarray(thresholds, np.float32).reshape((n,) + (1,) * (p.ndim - 1))
    emit = np.zeros(n, bool) if emit is None else np.asarray(emit, bool)
    absorb = np.zeros(n, bool) if absorb is None else np.asarray(absorb, bool)
    for i in np.flatnonzero(absorb):
        others = [j for j in np.flatnonzero(emit) if j != i]
        if others:
            p[i][p[others].max(axis=0) > p[i]] = 0.0
    if not 0.0 <= float(object_weight) <= 1.0:
        raise ValueProblem(f"object_weight must be in [0, 1], got {object_weight}")
    above = p >= thr
    if object_weight > 0:
        w = np.float32(object_weight)
        p = np.stack([(1 - w) * p[i] + w * object_mean(p[i], above[i]) for i in range(n)])
    masked = np.where(above, p, -1.0)
    lab = (np.argmax(masked, axis=0) + 1).astype(np.uint8)
    lab[~above.any(axis=0)] = 0
    return lab


def _argmax_block(*blocks, thresholds, object_weight=0.0):
    return compete_maps(np.stack(blocks), thresholds, object_weight=object_weight)


def _combine(maps, infos, interactions, voxel_size):
    """Steps 1 and 2 of the competition on lazy ``[z, y, x]`` maps (step 3 is blockwise)."""
    from ..ops.interactions import compete, interact

    emit = [i for i, info in enumerate(infos) if info.emit]
    absorb = [i for i, info in enumerate(infos) if info.absorb]
    if emit and absorb:
        maps = compete(list(maps), emit=emit, absorb=absorb)
    maps = list(maps)
    titles = [info.title for info in infos]
    for spec in interactions or ():
        spec = dict(spec)
        c, p = (_index(spec.get(k), titles) for k in ("child", "parent"))
        radius = float(spec.get("radius", 0.0)) / float(voxel_size or 1.0)   # Å -> voxels
        maps[c] = interact(maps[c], maps[p], mode=spec.get("mode", "colocalize"), radius=radius,
                           threshold=float(spec.get("threshold", infos[p].threshold)))
    return maps


def _index(key, titles):
    if isinstance(key, (int, np.integer)) and 0 <= int(key) < len(titles):
        return int(key)
    if key in titles:
        return titles.index(key)
    raise ValueProblem(f"interaction names model {key!r}; models are {titles} (or indices 0..{len(titles) - 1})")


def output_path(outdir, tomogram) -> Path:
    """Where :func:`segment_features` writes the labels of ``tomogram``: ``outdir/<stem>.zarr``."""
    return Path(outdir) / f"{tomo_name(tomogram)}.zarr"


def segment_features(tomograms, models, outdir, *, interactions=None, client=None, slab=None, levels=2,
                     overwrite=False, batch_size=32, object_weight=0.0, object_halo=8):
    """Apply N one-feature models to M tomograms in one distributed call; write one label map each.

    Parameters
    ----------
    tomograms : list of str or Path
        Tomograms in any format :func:`tomochunk.open_volume` reads.
    models : list of str, Path or FeatureModel
        Model archives (ours ``.tcm`` or Ais ``.scnm``) or loaded models (saved to
        temporary archives that workers load by path; on a multi-machine
        cluster pass archives on a shared file system); label ``i + 1`` is ``models[i]``. Each model's ``threshold``, ``emit``,
        ``absorb`` and ``pixel_size`` come from its metadata.
    outdir : str or Path
        Receives ``<tomogram stem>.zarr`` label stores (OME-Zarr, uint8).
    interactions : list of dict, optional
        ``{"child": title or index, "parent": title or index, "mode": "colocalize" | "avoid",
        "radius": Å, "threshold": parent threshold (default: the parent model's)}``,
        applied in order after emit/absorb, e.g. ribosomes kept only within 100 Å of membranes.
    client : distributed.Client, optional
        Default: the current client, else an embedded LocalCluster.
    slab : int, optional
        Slices per task (default: about 64 MB of float32).
    levels : int
        Multiscale levels of the label stores.
    overwrite : bool
        Recompute tomograms whose label store is complete (default: skip them).
    object_weight : float
        Weight of each candidate's object mean in the argmax (0: voxel scores,
        EMAN2 / Ais; see :func:`compete_maps`).
    object_halo : int
        With ``object_weight > 0``: slices each side of a slab seen when
        finding objects (objects longer than a slab plus halos are split).

    Returns
    -------
    dict
        ``{tomogram: "done" | "skipped"}``.

    Examples
    --------
    >>> segment_features(["t1.mrc", "t2.mrc"], ["membrane.tcm", "actin.scnm", "ribosome.tcm"],
    ...                  "labels/")  # doctest: +SKIP
    {'t1.mrc': 'done', 't2.mrc': 'done'}
    """
    import dask
    import dask.array as da
    import zarr

    from ..io.omezarr import PyramidWriter, is_complete
    from ..io.volume import open_volume
    from ..parallel import client_context

    if not models:
        raise ValueProblem("segment_features needs at least one model")
    if not 0.0 <= float(object_weight) <= 1.0:
        raise ValueProblem(f"object_weight must be in [0, 1], got {object_weight}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    refs = [model_ref(m) for m in models]
    infos = [cached_model(r).info for r in refs]
    for r, info in zip(refs, infos):
        if info.n_classes != 1:
            raise ValueProblem(f"model {info.title!r} ({r}) has {info.n_classes} outputs; segment_features "
                               "takes one-feature (sigmoid) models")
    thresholds = [i.threshold for i in infos]
    classes = {str(i + 1): info.title for i, info in enumerate(infos)}

    status, jobs = {}, []
    for t in tomograms:
        out = output_path(outdir, t)
        if out.exists() and is_complete(out) and not overwrite:
            log.info("%s: %s is complete, skipped", t, out)
            status[str(t)] = "skipped"
            continue
        vol = open_volume(t)
        maps = [segment_slices(vol, r, slab=slab, batch_size=batch_size).data[0] for r in refs]
        maps = _combine(maps, infos, interactions, vol.attrs.get("voxel_size"))
        maps = [m.rechunk(maps[0].chunks) for m in maps]
        if object_weight > 0 and object_halo > 0:
            depth = {0: min(int(object_halo), maps[0].shape[0]), 1: 0, 2: 0}
            labels = da.map_overlap(_argmax_block, *maps, depth=depth, boundary="none", thresholds=thresholds,
                                    object_weight=float(object_weight), dtype=np.uint8,
                                    meta=np.empty((0, 0, 0), np.uint8), token=f"compete-{out.stem}")
        else:
            labels = da.map_blocks(_argmax_block, *maps, thresholds=thresholds,
                                   object_weight=float(object_weight), dtype=np.uint8,
                                   meta=np.empty((0, 0, 0), np.uint8), token=f"compete-{out.stem}")
        tmp = outdir / f".{out.stem}.labels.tmp.zarr"
        if tmp.exists():
            shutil.rmtree(tmp)
        # one storage chunk per task: every writer owns whole chunks
        target = zarr.create_array(str(tmp), shape=labels.shape, chunks=tuple(c[0] for c in labels.chunks),
                                   dtype=np.uint8, fill_value=0, zarr_format=2)
        jobs.append((t, out, tmp, labels, target, float(vol.attrs.get("voxel_size", 1.0))))
        status[str(t)] = "done"
    if not jobs:
        return status

    if client is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
    with client_context(client) as c:
        stores = da.store([j[3] for j in jobs], [j[4] for j in jobs], lock=False, compute=False)
        log.info("segmenting %d tomograms with %d models in one computation", len(jobs), len(refs))
        dask.compute(stores, scheduler=c)
    for t, out, tmp, labels, _, vs in jobs:
        src = da.from_zarr(str(tmp))
        w = PyramidWriter(out, src.shape, np.uint8, dims=("z", "y", "x"), voxel_size=vs, levels=levels,
                          label=True, overwrite=True, name=out.stem,
                          attrs={"classes": classes,
                                 "models": [{"title": i.title, "source": str(r), "threshold": i.threshold,
                                             "emit": i.emit, "absorb": i.absorb} for r, i in zip(refs, infos)],
                                 "object_weight": float(object_weight),
                                 "interactions": list(interactions or [])})
        w.write(lambda region: np.asarray(src[region]))
        w.finish(source=str(t))
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("%s -> %s", t, out)
    return status
