"""Train the DeepFinder U-Net on patches streamed from lazy volumes.

Patches are cut straight out of Zarr / HDF5 / MRC / dask / xarray arrays
(never whole volumes), around objects of the training list (class-balanced
bootstrap, random shift), augmented, normalised per patch, and prepared by
a pool of threads ahead of the optimiser so that the compute never waits
for I/O.

Sampling follows DeepFinder's ``Train``: the patch centre is the object's
integer position plus a uniform random shift in ``[-shift, shift]`` per
axis, moved inside the volume when too close to a border; tomogram patches
are rotated by 180° about the tilt axis (y) with probability 1/2.
Differences: patches are float32 and built in parallel; validation uses one
fixed set of patches (so curves are comparable between epochs), one
forward pass per batch, and precision/recall/F1 pooled over all validation
voxels.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
import time
from collections import deque
from pathlib import Path

import numpy as np

from .._log import get_logger
from ..errors import MissingError, ShapeError, ValueProblem
from .models import (DEFAULT_FILTERS, check_patch_shape, deepfinder_unet, load_model, model_info,
                     policy_name, with_dtype)

log = get_logger(__name__)

__all__ = ["train", "PatchSampler", "class_scores"]

_CKPT = re.compile(r"checkpoint_epoch(\d+)\.keras$")


# --- inputs --------------------------------------------------------------------------------

def _as_reader(arr, what, key):
    """Return an object supporting numpy slicing, and its shape."""
    if isinstance(arr, (str, Path)):
        from ..io.volume import open_source

        if not Path(arr).exists():
            raise MissingError(f"{what} of tomogram {key!r} does not exist", arr)
        arr, _ = open_source(arr)
    data = getattr(arr, "data", arr) if hasattr(arr, "dims") else arr  # xarray -> dask/numpy
    if getattr(data, "ndim", None) != 3:
        raise ShapeError(f"{what} of tomogram {key!r} must be 3D, not shape {getattr(data, 'shape', '?')}")
    return data


def _read(arr, sl):
    if hasattr(arr, "compute"):  # dask: run here, not on a distributed cluster
        return np.asarray(arr[sl].compute(scheduler="sync"))
    return np.asarray(arr[sl])


def _as_dict(x, what):
    if isinstance(x, dict):
        return {str(k): v for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return {str(i): v for i, v in enumerate(x)}
    return {"0": x}  # a single volume


def _objects(objects, keys, what):
    import pandas as pd

    if not isinstance(objects, pd.DataFrame):
        objects = pd.DataFrame(objects)
    if len(objects) == 0:
        raise ValueProblem(f"{what} is empty")
    if "class_label" not in objects.columns and "label" in objects.columns:
        objects = objects.rename(columns={"label": "class_label"})
    missing = [c for c in ("class_label", "x", "y", "z") if c not in objects.columns]
    if missing:
        raise ValueProblem(f"{what} lacks column(s) {missing}")
    col = "tomo" if "tomo" in objects.columns else ("tomo_idx" if "tomo_idx" in objects.columns else None)
    if col is None:
        if len(keys) != 1:
            raise ValueProblem(f"{what} has no 'tomo' column but {len(keys)} volumes were given")
        tomos = np.array([keys[0]] * len(objects), dtype=object)
    else:
        tomos = objects[col].astype(str).to_numpy(dtype=object)
        absent = sorted(set(tomos) - set(keys))
        if absent:
            raise ValueProblem(f"{what} references tomogram(s) {absent} that are not among the "
                               f"volumes {sorted(keys)}")
    return (tomos, objects["class_label"].to_numpy().astype(np.int64),
            np.trunc(objects[["z", "y", "x"]].to_numpy(dtype=float)).astype(np.int64))


class PatchSampler:
    """Draw (patch, one-hot target) batches around objects of lazy volumes.

    Parameters
    ----------
    volumes, targets : dict {tomo: array}
        Array-likes that support numpy slicing (dask, zarr, h5py, numpy).
    objects : (tomos, labels, zyx) as returned by ``_objects``.
    n_classes : int
    patch_shape : tuple of 3 ints
    shift : int
        Maximum random shift of the patch centre (DeepFinder's ``Lrnd``).
    bootstrap : bool
        Pick the class uniformly first, then an object of that class.
    augment : {'tomo', 'movie', None}
    region : dict {tomo: region}, optional
        Labelled sub-region per tomogram: a bounding box ``((z0, z1), (y0, y1),
        (x0, x1))`` (patch centres are moved so that the patch stays inside it
        where it fits) or a boolean mask array of the volume's shape. Target
        voxels outside it get ``ignore_label``.
    ignore_label : int, optional
        Target value of ignored voxels (allowed in targets, one extra one-hot
        channel); default none.
    """

    def __init__(self, volumes, targets, objects, n_classes, patch_shape, *, shift=13,
                 bootstrap=True, augment="tomo", region=None, ignore_label=None):
        self.volumes, self.targets = volumes, targets
        self.tomos, self.labels, self.zyx = objects
        self.n_classes = int(n_classes)
        self.patch = np.asarray(patch_shape)
        self.shift, self.bootstrap, self.augment = int(shift), bool(bootstrap), augment
        self.classes = np.unique(self.labels)
        self.by_class = {c: np.nonzero(self.labels == c)[0] for c in self.classes}
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.region = region or {}
        if self.region and self.ignore_label is None:
            raise ValueProblem("a labelled region needs an ignore label (a loss that ignores voxels: "
                               "'dice_ce', 'pu' or 'pu_balanced')")
        self.eye = np.eye(self.n_classes + (self.ignore_label is not None), dtype=np.float32)

    def _pick(self, rng):
        if self.bootstrap:
            c = self.classes[rng.integers(len(self.classes))]
            pool = self.by_class[c]
            return pool[rng.integers(len(pool))]
        return rng.integers(len(self.labels))

    def patch_at(self, k, rng):
        """Data and label patches around object ``k`` (random shift, no augmentation)."""
        tomo = self.tomos[k]
        vol, tgt = self.volumes[tomo], self.targets[tomo]
        dim = np.asarray(vol.shape)
        half = self.patch // 2
        c = self.zyx[k] + rng.integers(-self.shift, self.shift + 1, size=3)
        reg = self.region.get(tomo)
        box = None
        if reg is not None and not hasattr(reg, "shape"):  # bounding box: keep the patch inside it
            box = np.asarray(reg, dtype=np.int64).reshape(3, 2)
            fits = box[:, 1] - box[:, 0] >= self.patch
            c = np.where(fits, np.minimum(np.maximum(c, box[:, 0] + half), box[:, 1] - (self.patch - half)), c)
        c = np.minimum(np.maximum(c, half), dim - (self.patch - half))
        sl = tuple(slice(int(a - h), int(a - h + p)) for a, h, p in zip(c, half, self.patch))
        x = _read(vol, sl).astype(np.float32)
        y = _read(tgt, sl)
        if reg is not None:
            if box is not None:
                grid = np.ogrid[sl]
                inside = np.ones(y.shape, bool)
                for g, (a, b) in zip(grid, box):
                    inside = inside & (g >= a) & (g < b)
            else:
                inside = _read(reg, sl).astype(bool)
            y = np.where(inside, y, self.ignore_label)
        top = self.n_classes if self.ignore_label is None else max(self.n_classes, self.ignore_label + 1)
        if y.size and int(y.max()) >= top:
            raise ValueProblem(f"target of tomogram {tomo!r} holds label {int(y.max())} but "
                               f"n_classes={self.n_classes} (labels must be < n_classes)")
        if y.size and int(y.min()) < 0:
            raise ValueProblem(f"target of tomogram {tomo!r} holds negative label {int(y.min())}")
        sd = x.std()
        x = (x - x.mean()) / (sd if sd > 0 else 1.0)
        return x, y.astype(np.int64)

    def _augment(self, x, y, rng):
        if self.augment == "tomo":
            if rng.random() < 0.5:  # 180° about the tilt axis (y): keeps the missing wedge
                x, y = x[::-1, :, ::-1], y[::-1, :, ::-1]
        elif self.augment == "movie":
            if rng.random() < 0.5:
                x, y = x[:, ::-1], y[:, ::-1]
            if rng.random() < 0.5:
                x, y = x[:, :, ::-1], y[:, :, ::-1]
            if x.shape[1] == x.shape[2] and rng.random() < 0.5:
                x, y = x.transpose(0, 2, 1), y.transpose(0, 2, 1)
        return x, y

    def batch(self, rng, batch_size, augment=True):
        """One batch: ``x [B, z, y, x, 1]`` float32, label patches ``[B, z, y, x]`` int."""
        xs = np.empty((batch_size, *self.patch, 1), np.float32)
        ys = np.empty((batch_size, *self.patch), np.int64)
        for i in range(batch_size):
            x, y = self.patch_at(self._pick(rng), rng)
            if augment:
                x, y = self._augment(x, y, rng)
            xs[i, ..., 0] = x
            ys[i] = y
        return xs, ys

    def onehot(self, labels):
        return self.eye[labels]


# --- metrics -------------------------------------------------------------------------------

def class_scores(confusion: np.ndarray):
    """Per-class precision, recall and F1 from a confusion matrix ``[true, pred]``.

    Examples
    --------
    >>> p, r, f = class_scores(np.array([[5, 1], [0, 4]]))
    >>> round(float(f[1]), 3)
    0.889
    """
    cm = np.asarray(confusion, dtype=float)
    tp = np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return precision, recall, f1


def _plot_history(hist, path, n_classes):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    e = hist["epoch"]
    axes[0].plot(e, hist["loss"], label="train")
    axes[0].plot(e, hist["val_loss"], label="validation")
    axes[0].set_title("Tversky loss")
    for name, ax in (("f1", axes[1]), ("recall", axes[2])):
        for c in range(1, n_classes):
            ax.plot(e, hist[f"val_{name}_{c}"], label=f"class {c}")
        ax.set_ylim(0, 1)
        ax.set_title(f"validation {name}")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --- training ------------------------------------------------------------------------------

def _micro_batches(batch_size: int, micro_batch) -> list:
    """Where a batch is cut into micro-batches of ``micro_batch`` patches (the last may be smaller)."""
    m = int(micro_batch or 0)
    return list(range(m, batch_size, m)) if 0 < m < batch_size else []


def _micro_batched(net, cuts: list):
    """A training view of ``net`` that runs it on slices of the batch in one graph.

    The slices' outputs are concatenated before the loss, so a step computes the
    loss and gradients of the whole batch (the same maths up to float
    round-off). It holds no weights of its own: ``net`` is trained in place.
    """
    import keras

    class MicroBatched(keras.Model):
        def call(self, x, training=False):
            return keras.ops.concatenate([net(p, training=training)
                                          for p in keras.ops.split(x, cuts, axis=0)], axis=0)

    view = MicroBatched(name=f"{net.name}_micro")
    view.net = net   # tracked, so that the view's trainable variables are the net's
    return view


def _latest_checkpoint(out_dir: Path):
    found = [(int(m.group(1)), p) for p in out_dir.glob("checkpoint_epoch*.keras")
             if (m := _CKPT.search(p.name))]
    return max(found) if found else (0, None)


def train(volumes, targets, objects_train, objects_valid, *, n_classes, patch_size=48,
          batch_size=8, epochs=10, steps_per_epoch=50, valid_steps=4, lr=1e-4, out_dir,
          model=None, filters=DEFAULT_FILTERS, anisotropic=False, augment=None, shift=13,
          bootstrap=True, loss_alpha=0.5, loss_beta=0.5, ce_weight=0.0, class_weights=None,
          checkpoint_every=10,
          resume=False,
          workers=2, prefetch=4, seed=0, precision="float32", time_limit=None, legacy_h5=True,
          progress=True, loss="tversky", tau=None, region=None, micro_batch=2):
    """Train DeepFinder's U-Net on patches read lazily around annotated objects.

    Parameters
    ----------
    volumes, targets : dict, list or array
        Tomograms (or movies) and their label maps, keyed by tomogram
        (``{tomo: array}``; a list is keyed by index, like DeepFinder's
        ``tomo_idx``). Values: dask / xarray / zarr / h5py / numpy arrays or
        paths (opened lazily). Only patches are read.
    objects_train, objects_valid : pandas.DataFrame
        Object lists (``tomo``, ``class_label``, ``x, y, z`` in voxels). Patches
        are centred on these objects.
    n_classes : int
        Number of classes including background; every target label must be
        smaller.
    patch_size : int or tuple of 3 ints
        Patch size, a multiple of 4 (y and x only for ``anisotropic``).
    batch_size, epochs, steps_per_epoch : int
        Patches per step, epochs, optimiser steps per epoch.
    valid_steps : int
        Validation batches (fixed patches, drawn once) evaluated after each epoch.
    lr : float
        Adam learning rate (DeepFinder: 1e-4).
    out_dir : str or Path
        Where checkpoints, ``history.csv``, ``history.png`` and the final
        model (``model_final.keras``, plus ``net_weights_FINAL.h5`` if
        ``legacy_h5``) go.
    model : keras.Model or path, optional
        Start from this network (e.g. DeepFinder weights for fine-tuning);
        default a new :func:`~tomochunk.nn.models.deepfinder_unet`.
    filters, anisotropic
        Passed to :func:`~tomochunk.nn.models.deepfinder_unet` for a new network.
    augment : {'tomo', 'movie', None}, optional
        ``'tomo'``: 180° rotation about the tilt axis (y). ``'movie'``: y/x
        flips and swaps. Default ``'movie'`` if ``anisotropic`` else ``'tomo'``.
    shift : int
        Random shift of patch centres, voxels (DeepFinder's ``Lrnd`` = 13).
    bootstrap : bool
        Class-balanced sampling (uniform over classes, then over objects).
    loss_alpha, loss_beta : float
        Tversky weights of false positives and false negatives (0.5: Dice).
    ce_weight : float
        Weight of an added cross-entropy term (0: DeepFinder's pure Tversky loss).
    class_weights : sequence of float, optional
        Per-class weights of that cross-entropy term (``n_classes`` values), for classes
        of very few voxels per patch (see :class:`~tomochunk.nn.losses.TverskyLoss`).
    checkpoint_every : int
        Save ``checkpoint_epochNNNN.keras`` (with the optimiser state) every N epochs.
    resume : bool or path
        ``True``: continue from the latest checkpoint in ``out_dir``; a path:
        from that checkpoint. The history is kept up to that epoch.
    workers, prefetch : int
        Threads preparing batches, and batches prepared ahead.
    seed : int
        Seed of all sampling (per epoch and step, so resuming is reproducible).
    precision : {'float32', 'bfloat16'}
        ``'bfloat16'``: mixed precision (float32 weights, bfloat16 convolutions),
        3-4x faster on CPUs with AMX / AVX512-BF16. Saved final models are float32.
    time_limit : float, optional
        Seconds: stop (with a checkpoint) after the first epoch that ends past
        this wall-clock budget.
    legacy_h5 : bool
        Also write the final weights as DeepFinder ``net_weights_FINAL.h5``.
    progress : bool
        Show a tqdm progress bar.
    loss : {"tversky", "dice_ce", "pu", "pu_balanced"} or keras.losses.Loss
        ``"tversky"`` (default, DeepFinder's), ``"dice_ce"`` (Dice +
        cross-entropy) or ``"pu"`` (non-negative positive-unlabeled loss,
        :class:`~tomochunk.nn.pu.NNPULoss`, for sparse labels with
        ``n_classes=2``; ``"pu_balanced"``: its class-balanced variant). With
        any loss but ``"tversky"`` the target value
        ``n_classes`` means "ignore" (soft positives of
        :func:`~tomochunk.ops.heatmap.heatmap_targets`, whose label map
        is 0 unlabeled, 1 positive, 2 soft).
    tau : float, optional
        Class prior of ``loss="pu"``: the fraction of positive voxels among the
        unlabeled voxels of the training patches.
    region : bounding box, mask, or dict {tomo: box or mask}, optional
        The labelled sub-region (``((z0, z1), (y0, y1), (x0, x1))`` or a
        boolean mask of the volume's shape): patches are kept inside a box
        and voxels outside the region are ignored, so unlabelled particles
        elsewhere are not learnt as background. Needs a loss other than ``"tversky"``.
    micro_batch : int or None
        Patches per network call within a step: the batch is cut into
        micro-batches of this many patches (the last may be smaller), run in one graph, and the
        loss is taken over the whole batch, so a step is the same maths (to
        float round-off). On 2 cores oneDNN's 3D convolutions keep both busy
        on micro-batches of 2 but not on 4 patches: float32 steps of batch 4
        ran 1.12-1.38x faster in steady loops (1.05-1.09x in the median of
        ``bench_train.py``'s noisier rounds). ``None``: one call per batch.

    Returns
    -------
    model : keras.Model
    history : pandas.DataFrame
        One row per epoch: ``loss``, ``val_loss``, ``val_accuracy``,
        ``val_precision_c``, ``val_recall_c``, ``val_f1_c`` per class,
        ``seconds``, ``patches_per_s`` (steady state: from the end of the
        first step of the epoch to the end of the last), ``input_wait_s`` and
        ``elapsed_s`` (since the call started).

    Raises
    ------
    ValueProblem
        Patch size not a multiple of 4, object list referencing a missing
        tomogram, labels not below ``n_classes``.
    ShapeError
        A volume and its target differ in shape, or are smaller than a patch.

    Examples
    --------
    >>> model, hist = train({"t1": vol}, {"t1": lab}, objs_train, objs_valid,
    ...                     n_classes=4, patch_size=48, epochs=20, out_dir="run1")  # doctest: +SKIP
    >>> hist[["epoch", "val_f1_1"]].tail(1)                                         # doctest: +SKIP
    """
    import keras
    import pandas as pd
    from tqdm.auto import tqdm

    from .losses import TverskyLoss, tversky_numpy
    from .pu import CUSTOM_OBJECTS, make_loss

    n_classes = int(n_classes)
    if n_classes < 2:
        raise ValueProblem(f"n_classes must be >= 2, not {n_classes}")
    patch = check_patch_shape(patch_size, anisotropic)
    for name, v in (("batch_size", batch_size), ("epochs", epochs), ("steps_per_epoch", steps_per_epoch),
                    ("valid_steps", valid_steps), ("checkpoint_every", checkpoint_every),
                    ("workers", workers), ("prefetch", prefetch)):
        if int(v) < 1:
            raise ValueProblem(f"{name} must be >= 1, not {v}")
    if micro_batch is not None and int(micro_batch) < 0:
        raise ValueProblem(f"micro_batch must be >= 1 (0 or None: the whole batch per call), not {micro_batch}")
    augment = augment if augment is not None else ("movie" if anisotropic else "tomo")
    if augment not in ("tomo", "movie", "none", False):
        raise ValueProblem(f"augment must be 'tomo', 'movie' or None, not {augment!r}")

    vols, tgts = _as_dict(volumes, "volumes"), _as_dict(targets, "targets")
    if set(vols) != set(tgts):
        raise ValueProblem(f"volumes {sorted(vols)} and targets {sorted(tgts)} have different tomograms")
    vols = {k: _as_reader(v, "volume", k) for k, v in vols.items()}
    tgts = {k: _as_reader(v, "target", k) for k, v in tgts.items()}
    for k in vols:
        if tuple(vols[k].shape) != tuple(tgts[k].shape):
            raise ShapeError(f"volume {k!r} has shape {tuple(vols[k].shape)} but its target "
                             f"{tuple(tgts[k].shape)}")
        if any(s < p for s, p in zip(vols[k].shape, patch)):
            raise ShapeError(f"volume {k!r} of shape {tuple(vols[k].shape)} is smaller than a patch {patch}")
    keys = sorted(vols)
    obj_t = _objects(objects_train, keys, "objects_train")
    obj_v = _objects(objects_valid, keys, "objects_valid")
    for what, (_, labels, _) in (("objects_train", obj_t), ("objects_valid", obj_v)):
        if labels.max() >= n_classes or labels.min() < 1:
            raise ValueProblem(f"{what} has class labels {sorted(set(labels.tolist()))} but n_classes="
                               f"{n_classes} (labels 1..n_classes-1; 0 is background)")
    aug = None if augment in ("none", False) else augment
    if class_weights is not None:
        if len(class_weights) != n_classes:
            raise ValueProblem(f"class_weights needs {n_classes} values (one per class), got {list(class_weights)}")
        if not ce_weight:
            raise ValueProblem("class_weights weight the cross-entropy term: set ce_weight > 0 too")
    loss_fn = make_loss(loss, tau=tau, alpha=loss_alpha, beta=loss_beta, ce_weight=ce_weight,
                        class_weights=class_weights)
    is_tversky = isinstance(loss_fn, TverskyLoss)
    ignore = None if is_tversky else n_classes  # our other losses ignore an extra channel
    if region is not None and not isinstance(region, dict):
        region = {k: region for k in keys}
    elif region is not None:
        region = {str(k): v for k, v in region.items()}
    sampler_t = PatchSampler(vols, tgts, obj_t, n_classes, patch, shift=shift, bootstrap=bootstrap,
                             augment=aug, region=region, ignore_label=ignore)
    sampler_v = PatchSampler(vols, tgts, obj_v, n_classes, patch, shift=shift, bootstrap=bootstrap,
                             augment=None, region=region, ignore_label=ignore)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start, history = 0, []
    if resume:
        if resume is True:
            start, ckpt = _latest_checkpoint(out_dir)
        else:
            ckpt = Path(resume)
            if not ckpt.exists():
                raise MissingError("checkpoint does not exist", ckpt)
            m = _CKPT.search(ckpt.name)
            start = int(m.group(1)) if m else 0
        if ckpt is not None:
            model = keras.saving.load_model(ckpt, custom_objects={"TverskyLoss": TverskyLoss,
                                                                 **CUSTOM_OBJECTS})
            hpath = out_dir / "history.csv"
            if hpath.exists():
                h = pd.read_csv(hpath)
                history = h[h["epoch"] <= start].to_dict("records")
            log.info("resuming from %s (epoch %d)", ckpt, start)
        else:
            log.info("no checkpoint in %s: starting from scratch", out_dir)
    if model is None or isinstance(model, (str, Path)):
        model = (deepfinder_unet(n_classes, filters=filters, anisotropic=anisotropic) if model is None
                 else load_model(model))
    if precision not in ("float32", "bfloat16"):
        raise ValueProblem(f"precision must be 'float32' or 'bfloat16', not {precision!r}")
    policy = "mixed_bfloat16" if precision == "bfloat16" else None
    if (policy or "float32") != policy_name(model):
        model = with_dtype(model, policy)
    info = model_info(model)
    if info["n_classes"] != n_classes:
        raise ValueProblem(f"the model predicts {info['n_classes']} classes but n_classes={n_classes}")
    if not getattr(model, "optimizer", None) or not getattr(model, "compiled", False):
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr, beta_1=0.9, beta_2=0.999,
                                                      epsilon=1e-8), loss=loss_fn)
    cuts = _micro_batches(int(batch_size), micro_batch)
    stepper = model
    if cuts:
        # Shares the optimizer, so that checkpoints of ``model`` carry its state.
        stepper = _micro_batched(model, cuts)
        stepper.compile(optimizer=model.optimizer, loss=model.loss)

    # Validation patches: drawn once, reused every epoch.
    vrng = np.random.default_rng([seed, 2**31 - 1])
    valid = [sampler_v.batch(vrng, batch_size, augment=False) for _ in range(valid_steps)]

    def make_batch(epoch, step):
        rng = np.random.default_rng([seed, epoch, step])
        x, y = sampler_t.batch(rng, batch_size)
        return x, sampler_t.onehot(y)

    t_start = time.perf_counter()
    pool = cf.ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="tomochunk-patches")
    try:
        for epoch in range(start + 1, epochs + 1):
            t0 = time.perf_counter()
            queue = deque()
            nxt = 0
            wait = 0.0
            losses = []
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", disable=not progress,
                       leave=False)
            for step in range(steps_per_epoch):
                while nxt < steps_per_epoch and len(queue) < int(prefetch):
                    queue.append(pool.submit(make_batch, epoch, nxt))
                    nxt += 1
                tw = time.perf_counter()
                x, y = queue.popleft().result()
                wait += time.perf_counter() - tw
                loss = stepper.train_on_batch(x, y)
                losses.append(float(np.asarray(loss[0] if isinstance(loss, (list, tuple)) else loss)))
                if step == 0:
                    t_first = time.perf_counter()
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.close()
            t_end = time.perf_counter()
            if steps_per_epoch > 1:   # steady state: leave out the first step (graph tracing)
                rate = (steps_per_epoch - 1) * batch_size / (t_end - t_first)
            else:
                rate = batch_size / (t_end - t0)
            # validation
            cm = np.zeros((n_classes, n_classes), np.int64)
            vloss = []
            for x, y in valid:
                prob = np.asarray(model.predict_on_batch(x))
                if is_tversky:
                    vloss.append(tversky_numpy(sampler_v.onehot(y), prob, loss_alpha, loss_beta))
                else:
                    vloss.append(float(np.asarray(loss_fn(sampler_v.onehot(y), prob))))
                use = y < n_classes  # ignored voxels are not scored
                cm += np.bincount(y[use] * n_classes + prob.argmax(-1)[use],
                                  minlength=n_classes ** 2).reshape(n_classes, n_classes)
            precision, recall, f1 = class_scores(cm)
            row = {"epoch": epoch, "loss": float(np.mean(losses)), "val_loss": float(np.mean(vloss)),
                   "val_accuracy": float(np.trace(cm) / max(cm.sum(), 1))}
            for c in range(n_classes):
                row[f"val_precision_{c}"] = float(precision[c])
                row[f"val_recall_{c}"] = float(recall[c])
                row[f"val_f1_{c}"] = float(f1[c])
            row["seconds"] = time.perf_counter() - t0
            row["patches_per_s"] = rate
            row["input_wait_s"] = wait
            row["elapsed_s"] = time.perf_counter() - t_start
            history.append(row)
            hist = pd.DataFrame(history)
            hist.to_csv(out_dir / "history.csv", index=False)
            try:
                _plot_history(hist, out_dir / "history.png", n_classes)
            except Exception as exc:  # a plot must never stop a training run
                log.warning("could not plot history: %s", exc)
            log.info("epoch %d: loss %.4f val_loss %.4f F1 %s (%.1f patches/s, waited %.1f s for input)",
                     epoch, row["loss"], row["val_loss"], np.round(f1[1:], 3), row["patches_per_s"], wait)
            over = time_limit is not None and time.perf_counter() - t_start > time_limit
            if epoch % int(checkpoint_every) == 0 or epoch == epochs or over:
                path = out_dir / f"checkpoint_epoch{epoch:04d}.keras"
                tmp = path.with_name(path.stem + ".tmp.keras")
                model.save(tmp)
                tmp.replace(path)
                (out_dir / "state.json").write_text(json.dumps({"epoch": epoch, "checkpoint": path.name}))
            if over:
                log.info("time limit of %.0f s reached after epoch %d", time_limit, epoch)
                break
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    from .models import save_model

    final = model if policy is None else with_dtype(model, None)
    save_model(final, out_dir / "model_final.keras",
               legacy_h5=(out_dir / "net_weights_FINAL.h5") if legacy_h5 else None)
    return final, pd.DataFrame(history)
