"""Multi-feature segmentation as a workflow: N one-feature models on M tomograms, one label store each.

The competition of the models' maps is computed by :mod:`tomochunk.nn.features`
(see its notes); this module reads the tomograms, runs every (tomogram,
model) pair in one distributed computation and writes each tomogram's labels
with the one NGFF writer (:class:`tomochunk.io.omezarr.PyramidWriter`).
"""

from __future__ import annotations

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
from ..nn.slices import cached_model, model_ref, segment_slices
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
        check_alias(out, [t])
        if out.exists() and is_complete(out) and not overwrite:
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
        status[str(t)] = "done"
    if not jobs:
        return status

    with client_context(current_client(client)) as c:
        stores = da.store([j[3] for j in jobs], [j[4] for j in jobs], lock=False, compute=False)
        log.info("segmenting %d tomograms with %d models in one computation", len(jobs), len(refs))
        dask.compute(stores, scheduler=c)
    for t, out, tmp, labels, _, vs in jobs:
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
