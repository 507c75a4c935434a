"""Multi-feature segmentation as a workflow: N one-feature models on M tomograms, one label store each.

The competition of the models' maps is computed by :mod:`tomochunk.nn.features`
(see its notes); this module reads the tomograms, runs every (tomogram,
model) pair in one distributed computation and writes each tomogram's labels
with the one NGFF writer (:class:`tomochunk.io.omezarr.PyramidWriter`).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import zarr

from .._log import get_logger
from .._names import tomo_name
from ..errors import ValueProblem
from ..io.omezarr import PyramidWriter, check_alias, is_complete
from ..io.volume import open_volume
from ..nn.features import combine_maps, compete_blocks
from ..nn.slices import model_ref, planning_info, segment_slices
from ..parallel import client_context, current_client

log = get_logger(__name__)


def output_path(outdir, tomogram) -> Path:
    """Where :func:`segment_features` writes the labels of ``tomogram``: ``outdir/<name>.zarr`` (the one name rule).

    Examples
    --------
    >>> output_path("out", "data/t1.ome.zarr").as_posix()
    'out/t1.zarr'
    """
    return Path(outdir) / f"{tomo_name(tomogram)}.zarr"


def _model_index(key, titles):
    """Index of the model ``key`` names: its title, or its index (an int) in ``titles``."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and 0 <= int(key) < len(titles):
        return int(key)
    if isinstance(key, str) and key in titles:
        return titles.index(key)
    raise ValueProblem(f"no model {key!r}; models are {titles} (or indices 0..{len(titles) - 1})")


def _override(infos, thresholds, emit, absorb):
    """``infos`` with the caller's thresholds and emit/absorb sets in place of the archives' metadata."""
    titles = [i.title for i in infos]
    infos = list(infos)
    if thresholds is not None:
        items = thresholds.items() if isinstance(thresholds, dict) else \
            [(k, thresholds) for k in range(len(infos))] if np.ndim(thresholds) == 0 else enumerate(thresholds)
        if not isinstance(thresholds, dict) and np.ndim(thresholds) == 1 and len(thresholds) != len(infos):
            raise ValueProblem(f"{len(thresholds)} thresholds for {len(infos)} models")
        for key, t in items:
            t = float(t)
            if not 0.0 <= t <= 1.0:
                raise ValueProblem(f"threshold of model {key!r} must be in [0, 1], got {t}")
            k = _model_index(key, titles)
            infos[k] = dataclasses.replace(infos[k], threshold=t)
    for flag, which in (("emit", emit), ("absorb", absorb)):
        if which is None:
            continue
        chosen = {_model_index(k, titles) for k in which}
        infos = [dataclasses.replace(info, **{flag: i in chosen}) for i, info in enumerate(infos)]
    return infos


def segment_features(tomograms, models, outdir, *, interactions=None, client=None, slab=None, levels=2,
                     overwrite=False, batch_size=32, object_weight=0.0, object_halo=8, save_scores=False,
                     thresholds=None, emit=None, absorb=None):
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
    save_scores : bool
        Also keep the per-feature score maps: ``<name>.zarr/labels/scores``, a
        ``[c, z, y, x]`` float16 OME-Zarr multiscale (one level, the tomogram's voxel size)
        where channel ``i`` (1..N) is model ``i``'s map after emit/absorb and the
        interactions (what the thresholds and the argmax see) and channel 0 the background
        ``1 - max_i``: the layout of ``tomochunk segment``'s scores, so ``pick --method
        peaks|heatmap|centroid`` on the store picks the features (class label = model label).
    thresholds : float, list or dict, optional
        Override the archives' thresholds: one value for every model, one per model, or
        ``{title or index: value}`` for some.
    emit, absorb : list, optional
        Override the archives' emit / absorb flags: the models (titles or indices) that
        emit / absorb; every other model does not (``[]``: none).

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
    if not models:
        raise ValueProblem("segment_features needs at least one model")
    if not 0.0 <= float(object_weight) <= 1.0:
        raise ValueProblem(f"object_weight must be in [0, 1], got {object_weight}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    refs = [model_ref(m) for m in models]
    infos = _override([planning_info(r) for r in refs], thresholds, emit, absorb)
    for r, info in zip(refs, infos):
        if info.n_classes != 1:
            raise ValueProblem(f"model {info.title!r} ({r}) has {info.n_classes} outputs; segment_features "
                               "takes one-feature (sigmoid) models")
    thresholds = [i.threshold for i in infos]
    classes = {str(i + 1): info.title for i, info in enumerate(infos)}

    status, jobs = {}, []
    for t in tomograms:
        out = output_path(outdir, t)
        check_alias(out, [t])
        scores_out = out / "labels" / "scores"
        if out.exists() and is_complete(out) and not overwrite and (
                not save_scores or (scores_out.exists() and is_complete(scores_out))):
            log.info("%s: %s is complete, skipped", t, out)
            status[str(t)] = "skipped"
            continue
        vol = open_volume(t)
        maps = [segment_slices(vol, r, slab=slab, batch_size=batch_size).data[0] for r in refs]
        maps = combine_maps(maps, infos, interactions, vol.attrs.get("voxel_size"))
        maps = [m.rechunk(maps[0].chunks) for m in maps]
        if object_weight > 0 and object_halo > 0:
            depth = {0: min(int(object_halo), maps[0].shape[0]), 1: 0, 2: 0}
            labels = da.map_overlap(compete_blocks, *maps, depth=depth, boundary="none", thresholds=thresholds,
                                    object_weight=float(object_weight), dtype=np.uint8,
                                    meta=np.empty((0, 0, 0), np.uint8), token=f"compete-{out.stem}")
        else:
            labels = da.map_blocks(compete_blocks, *maps, thresholds=thresholds,
                                   object_weight=float(object_weight), dtype=np.uint8,
                                   meta=np.empty((0, 0, 0), np.uint8), token=f"compete-{out.stem}")
        tmp = outdir / f".{out.stem}.labels.tmp.zarr"
        if tmp.exists():
            shutil.rmtree(tmp)
        # one storage chunk per task: every writer owns whole chunks
        target = zarr.create_array(str(tmp), shape=labels.shape, chunks=tuple(c[0] for c in labels.chunks),
                                   dtype=np.uint8, fill_value=0, zarr_format=2)
        jobs.append((t, out, tmp, labels, target, float(vol.attrs.get("voxel_size", 1.0))))
        if save_scores:
            stack = da.stack([m.astype(np.float32) for m in maps])
            stack = da.concatenate([da.clip(1.0 - stack.max(axis=0, keepdims=True), 0.0, 1.0), stack]).astype(
                np.float16).rechunk((1,) + tuple(c[0] for c in labels.chunks))
            stmp = outdir / f".{out.stem}.scores.tmp.zarr"
            if stmp.exists():
                shutil.rmtree(stmp)
            starget = zarr.create_array(str(stmp), shape=stack.shape, chunks=tuple(c[0] for c in stack.chunks),
                                        dtype=np.float16, fill_value=0, zarr_format=2)
            jobs.append((t, None, stmp, stack, starget, jobs[-1][-1]))
        status[str(t)] = "done"
    if not jobs:
        return status

    with client_context(current_client(client)) as c:
        stores = da.store([j[3] for j in jobs], [j[4] for j in jobs], lock=False, compute=False)
        log.info("segmenting %d tomograms with %d models in one computation", len(jobs), len(refs))
        dask.compute(stores, scheduler=c)
    pending = {}
    for t, out, tmp, labels, _, vs in jobs:
        if out is None:  # the scores of the tomogram just written (their labels came first)
            _write_scores(pending.pop("out"), tmp, vs, t, classes)
            continue
        pending["out"] = out
        src = da.from_zarr(str(tmp))
        w = PyramidWriter(out, src.shape, np.uint8, dims=("z", "y", "x"), voxel_size=vs, levels=levels,
                          label=True, overwrite=True, name=out.stem, classes=classes, inputs=[t],
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


def _write_scores(out, tmp, voxel_size, tomogram, classes):
    """``out/labels/scores`` from the computed scores in ``tmp`` (see ``save_scores``), marked complete last."""
    src = da.from_zarr(str(tmp))
    zarr.open_group(str(out / "labels"), mode="a", zarr_format=2)
    w = PyramidWriter(out / "labels" / "scores", src.shape, np.float16, dims=("c", "z", "y", "x"),
                      voxel_size=voxel_size, levels=1, overwrite=True, name="scores", inputs=[tomogram],
                      chunks=tuple(c[0] for c in src.chunks), attrs={"classes": {"0": "background", **classes}})
    w.write(lambda region: np.asarray(src[region]))
    w.finish(source=str(tomogram))
    shutil.rmtree(tmp, ignore_errors=True)
