"""Training the anisotropic network (ExoDeepFinder's 3 classes) on a dataset manifest."""

from __future__ import annotations

from pathlib import Path

import dask
import pandas as pd

from ...nn.train import train
from ...ops.normalize import normalize
from ._common import MOVIE_TRAIN_PATCH, N_CLASSES, _empty_objects, _load_movie_model, _movie_array, _objects
from .dataset import read_dataset

#: Cross-entropy weights of background, bright spot and exocytosis used by :func:`train_events`.
#: An event's cone is about 63 voxels, 0.2 % of a (16, 48, 48) patch centred on it: with
#: Dice (or Dice + unweighted cross-entropy) alone the network learns background everywhere
#: first and stays there for many epochs (measured on phantom movies: F1 0 after 6 epochs);
#: these weights give the rare classes a gradient from the first step.
EVENT_CLASS_WEIGHTS = (1.0, 10.0, 50.0)


def _dataset_lists(manifest):
    """(movies, targets, objects_train, objects_valid) from a manifest; ``tomo`` = index in movies."""
    data = read_dataset(manifest)
    entries = data["train"] + data["valid"]
    movies = [e["movie"] for e in entries]
    targets = [e["target"] for e in entries]
    lists = []
    for i, e in enumerate(entries):
        df, _ = _objects(e["objects"], "object list")
        df = df.copy()
        df["tomo"] = i
        lists.append(df)
    n_train = len(data["train"])
    ot = pd.concat(lists[:n_train], ignore_index=True) if n_train else _empty_objects()
    ov = pd.concat(lists[n_train:], ignore_index=True) if len(lists) > n_train else ot.iloc[:0]
    for df in (ot, ov):
        df.attrs["voxel_size"] = 1.0
    return movies, targets, ot, ov


def train_events(manifest, outdir, *, patch_size=MOVIE_TRAIN_PATCH, epochs=50, steps_per_epoch=100, batch_size=4,
                 filters="default", model=None, ce_weight=1.0, class_weights=EVENT_CLASS_WEIGHTS, **kw):
    """Train the anisotropic DeepFinder network (3 classes) on a dataset manifest.

    A thin wrapper over :func:`tomochunk.nn.train.train` with movie defaults: the
    ``(1, 2, 2)``-pooling network of ExoDeepFinder, patches of ``(16, 48, 48)`` frames x
    pixels, y/x flips and swaps as augmentation. Movies are normalised per frame to their
    1-99 percentiles (as ExoDeepFinder), then each patch to zero mean and unit variance
    (as :func:`~tomochunk.nn.train.train` does); :func:`segment_movie` applies the same.

    Parameters
    ----------
    manifest : path
        Written by :func:`make_dataset`.
    outdir : path
        Checkpoints, history and the final model (``model_final.keras`` and
        ``net_weights_FINAL.h5``).
    filters : {"default", "small"} or tuple
        Network width (ExoDeepFinder: the default 32/48/64).
    model : keras.Model or path, optional
        Start from this network (e.g. ExoDeepFinder weights, for fine-tuning).
    ce_weight : float
        Weight of the cross-entropy term added to the Tversky (Dice) loss. Default 1;
        0 gives DeepFinder's pure Tversky loss, which needs long runs on these rare classes.
    class_weights : sequence of 3 floats or None
        Cross-entropy weights of background, spot and exocytosis (default
        :data:`EVENT_CLASS_WEIGHTS`).
    **kw
        Passed on to :func:`tomochunk.nn.train.train` (``lr``, ``shift``, ``resume``, ``seed``, ...).

    Returns
    -------
    (keras.Model, pandas.DataFrame)
        The trained network and the per-epoch history.

    Examples
    --------
    >>> model, history = train_events("dataset/dataset.json", "model/", epochs=30)  # doctest: +SKIP
    """
    movies, targets, ot, ov = _dataset_lists(manifest)
    vols = [normalize(_movie_array(m)[0], method="percentile") for m in movies]
    tgts = [_movie_array(t)[0] for t in targets]
    if isinstance(model, (str, Path)):
        model = _load_movie_model(model)
    kw.setdefault("augment", "movie")
    if kw.get("loss", "tversky") == "tversky" and ce_weight:
        kw.update(ce_weight=ce_weight, class_weights=class_weights)
    else:
        kw["ce_weight"] = ce_weight
    # patches are small reads for this process: a thread pool here beats a round trip to a cluster
    with dask.config.set(scheduler="threads"):
        return train(vols, tgts, ot, ov, n_classes=N_CLASSES, patch_size=patch_size, batch_size=batch_size,
                     epochs=epochs, steps_per_epoch=steps_per_epoch, model=model, out_dir=outdir,
                     filters=filters, anisotropic=True, **kw)
