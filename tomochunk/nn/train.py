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
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .._log import get_logger
from ..errors import ValueProblem
from . import _trainsteps as steps
from ._augment import lr_at, wedge_augment
from ._predict import local_gpu, resolve_precision
from ._trainsteps import _micro_batched, _micro_batches, _objects, _read, class_scores  # noqa: F401 (re-exports)
from .models import DEFAULT_FILTERS

log = get_logger(__name__)

__all__ = ["train", "PatchSampler", "class_scores", "RECIPES"]

#: ``train(**RECIPES[name])``: DeepFinder's recipe (the defaults of this function), and the
#: practice of the CZII 2025 winners as measured on our hard phantom (``benchmarks/
#: bench_accuracy.py``): Tversky + cross-entropy, wedge-safe augmentation, EMA, warm-up and
#: cosine decay from a learning rate of 1e-3, on 24^3 patches. On 2 cores training is
#: step-bound: in 7-minute pilots (``bench_accuracy_pilot.py``, same data and clock) 48^3
#: patches ran 120 steps to a CZII F-beta of 0.157, 32^3 367 steps to 0.393 and 24^3 701 steps
#: to 0.551 (the 12-voxel sphere, 24 across, still fits a patch). Where a step costs more
#: (float32 on a CPU without AMX, e.g. Zen 3) the step count is the limit again: 7-minute
#: pilots at 24^3 gave 86 steps and 0.035 at batch 8 with filters (32, 48, 64), 181 and 0.093
#: with (16, 24, 32), 176 and 0.181 at batch 4, and 333 and 0.212 with both, hence batch 4 and
#: the narrower network (4x fewer multiply-adds); on the torch backend
#: (``tomochunk.nn._backend``) the same 7 minutes ran 926 steps to 0.368, and 20 minutes 2732
#: steps to 0.754. At DeepFinder's 1e-4 a 3-minute run found no particle (0.000, against 0.039 at 1e-3). The winner's 256:1 weighting
#: of particles (``pos_weight=256``) is left out: with 8 classes covering ~15 % of the volume it
#: made every voxel a particle (validation recall 1.0 for the largest class and background F1 0
#: after 200 steps). Checkpoint selection by validation F1 (``model_best.keras``) is always on.
RECIPES = {
    "deepfinder": {"loss": "tversky", "ce_weight": 0.0, "augment": "tomo", "ema": None,
                   "lr_schedule": "constant", "bootstrap": True, "shift": 13, "lr": 1e-4},
    "czii": {"ce_weight": 1.0, "augment": "wedge", "ema": 0.999, "lr_schedule": "cosine", "lr": 1e-3,
             "patch_size": 24, "batch_size": 4, "filters": (16, 24, 32)},
}


# --- sampling ------------------------------------------------------------------------------

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
    bootstrap : bool or 'sqrt'
        Pick the class uniformly first, then an object of that class (``'sqrt'``: classes
        drawn in proportion to the square root of their object counts; False: objects
        drawn uniformly).
    augment : {'tomo', 'movie', 'wedge', None}
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
        self.shift, self.augment = int(shift), augment
        self.bootstrap = "sqrt" if bootstrap == "sqrt" else bool(bootstrap)
        self.classes = np.unique(self.labels)
        self.by_class = {c: np.nonzero(self.labels == c)[0] for c in self.classes}
        counts = np.array([len(self.by_class[c]) for c in self.classes], float)
        self.class_p = np.sqrt(counts) / np.sqrt(counts).sum()
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.region = region or {}
        if self.region and self.ignore_label is None:
            raise ValueProblem("a labelled region needs an ignore label (a loss that ignores voxels: "
                               "'dice_ce', 'pu' or 'pu_balanced')")
        self.eye = np.eye(self.n_classes + (self.ignore_label is not None), dtype=np.float32)

    def _pick(self, rng):
        if self.bootstrap == "sqrt":
            c = self.classes[rng.choice(len(self.classes), p=self.class_p)]
            pool = self.by_class[c]
            return pool[rng.integers(len(pool))]
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
        elif self.augment == "wedge":
            x, y = wedge_augment(x, y, rng)
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


# --- training ------------------------------------------------------------------------------

def train(volumes, targets, objects_train, objects_valid, *, n_classes, patch_size=48,
          batch_size=8, epochs=10, steps_per_epoch=50, valid_steps=4, lr=1e-4, out_dir,
          model=None, filters=DEFAULT_FILTERS, anisotropic=False, augment=None, shift=13,
          bootstrap=True, loss_alpha=0.5, loss_beta=0.5, ce_weight=0.0, class_weights=None,
          checkpoint_every=10,
          resume=False,
          workers=2, prefetch=4, seed=0, precision="float32", time_limit=None, legacy_h5=True,
          progress=True, loss="tversky", tau=None, region=None, micro_batch=2, pos_weight=None, ema=None,
          lr_schedule="constant", warmup=0.05, minutes=None, keep_best=True):
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
        Seed of all sampling (per epoch and step, so resuming is reproducible) and of a new
        network's initial weights: two runs with the same seed train the same weights, in
        one process or on a cluster's workers.
    precision : {'float32', 'bfloat16', 'auto'}
        ``'bfloat16'``: mixed precision (float32 weights, bfloat16 convolutions),
        3-4x faster on CPUs with AMX / AVX512-BF16, about 10x slower where the CPU
        emulates it. ``'auto'``: bfloat16 on a GPU or such a CPU, float32 elsewhere.
        Saved final models are float32. Training runs on the Keras backend of this
        process: in float32 on a CPU, ``KERAS_BACKEND=torch`` (set before Keras is
        imported; ``tomochunk train --backend auto`` does it) makes steps about 4x
        faster than TensorFlow (``tomochunk.nn._backend``).
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
    pos_weight : float, optional
        Cross-entropy weight of every particle class against background 1 (the CZII
        winner's 256:1): ``class_weights = (1, w, ..., w)``; sets ``ce_weight=1`` when it is 0.
    ema : float, optional
        Keep an exponential moving average of the weights with this decay (e.g. 0.999;
        the decay ramps up as ``min(ema, (1 + n) / (10 + n))`` over the first steps).
        Validation, ``model_best.keras`` and the returned and final model use the averaged
        weights; checkpoints hold the raw weights.
    lr_schedule : {"constant", "cosine"}
        ``"cosine"``: linear warm-up over ``warmup`` of the run, then cosine decay to 1 % of
        ``lr``. Progress is the larger of the step fraction and, with ``minutes``, the time
        fraction, so a wall-clock budget also ends the decay.
    warmup : float
        Fraction of the run spent warming up (``lr_schedule="cosine"``).
    minutes : float, optional
        Wall-clock budget in minutes: the epoch in progress stops at the budget, is
        validated, and training ends (``time_limit`` in seconds also ends it, after the epoch).
    keep_best : bool
        Save ``model_best.keras`` (float32) whenever the mean validation F1 of the
        particle classes improves.

    ``sizes.json`` beside the models holds per-class voxel-count percentiles of the target
    objects (:func:`~tomochunk.nn._trainsteps.size_stats`), for size filters when picking.

    Returns
    -------
    model : keras.Model
    history : pandas.DataFrame
        One row per epoch: ``loss``, ``val_loss``, ``val_accuracy``,
        ``val_precision_c``, ``val_recall_c``, ``val_f1_c`` per class,
        ``steps`` (optimiser steps run; fewer where ``minutes`` ended the epoch),
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
    n_classes, patch, augment = steps.check_args(
        n_classes, patch_size, anisotropic, augment, micro_batch, precision, batch_size=batch_size, epochs=epochs,
        steps_per_epoch=steps_per_epoch, valid_steps=valid_steps, checkpoint_every=checkpoint_every,
        workers=workers, prefetch=prefetch)
    if precision == "auto":
        precision = resolve_precision(precision, gpu=local_gpu())
    vols, tgts = steps.open_inputs(volumes, targets, patch)
    keys = sorted(vols)
    obj_t, obj_v = steps.object_lists(objects_train, objects_valid, keys, n_classes)
    if pos_weight is not None:
        if class_weights is not None:
            raise ValueProblem("give class_weights or pos_weight, not both")
        if float(pos_weight) <= 0:
            raise ValueProblem(f"pos_weight must be > 0, not {pos_weight}")
        class_weights = [1.0] + [float(pos_weight)] * (n_classes - 1)
        ce_weight = ce_weight or 1.0
    if ema is not None and not 0 < float(ema) < 1:
        raise ValueProblem(f"ema must be between 0 and 1 (e.g. 0.999), not {ema}")
    if lr_schedule not in ("constant", "cosine"):
        raise ValueProblem(f"lr_schedule must be 'constant' or 'cosine', not {lr_schedule!r}")
    if minutes is not None and float(minutes) <= 0:
        raise ValueProblem(f"minutes must be > 0, not {minutes}")
    budget = None if minutes is None else float(minutes) * 60.0
    loss_fn, ignore = steps.loss_function(loss, n_classes, tau=tau, alpha=loss_alpha, beta=loss_beta,
                                          ce_weight=ce_weight, class_weights=class_weights)

    # samplers: training patches augmented, validation patches drawn once and reused every epoch
    region = steps.regions_by_tomo(region, keys)
    aug = None if augment in ("none", False) else augment
    sampler_t = PatchSampler(vols, tgts, obj_t, n_classes, patch, shift=shift, bootstrap=bootstrap,
                             augment=aug, region=region, ignore_label=ignore)
    sampler_v = PatchSampler(vols, tgts, obj_v, n_classes, patch, shift=shift, bootstrap=bootstrap,
                             augment=None, region=region, ignore_label=ignore)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start, resumed, history = steps.resume_point(resume, out_dir)
    steps.save_sizes(tgts, n_classes, out_dir)   # object sizes for pick's size filters
    if resumed is None and model is None:
        import keras  # heavy: only once a network is to be built

        keras.utils.set_random_seed(int(seed))  # the initial weights follow the seed too
    model, stepper, policy = steps.prepare_model(
        resumed if resumed is not None else model, n_classes=n_classes, filters=filters,
        anisotropic=anisotropic, precision=precision, lr=lr, loss_fn=loss_fn, batch_size=batch_size,
        micro_batch=micro_batch)

    vrng = np.random.default_rng([seed, 2**31 - 1])
    valid = [sampler_v.batch(vrng, batch_size, augment=False) for _ in range(valid_steps)]

    def make_batch(epoch, step):  # seeded per epoch and step, so resuming is reproducible
        rng = np.random.default_rng([seed, epoch, step])
        x, y = sampler_t.batch(rng, batch_size)
        return x, sampler_t.onehot(y)

    t_start = time.perf_counter()
    total = epochs * steps_per_epoch
    averager = steps.WeightAverage(model, ema) if ema is not None else None

    def before_step(epoch, step):  # learning rate of this step; False stops the epoch at the budget
        elapsed = time.perf_counter() - t_start
        if budget is not None and elapsed > budget:
            return False
        if lr_schedule != "constant":
            done = ((epoch - 1) * steps_per_epoch + step) / total
            if budget is not None:
                done = max(done, elapsed / budget)
            model.optimizer.learning_rate.assign(lr_at(done, lr, warmup=warmup, schedule=lr_schedule))
        return True

    best = -1.0
    pool = cf.ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="tomochunk-patches")
    try:
        for epoch in range(start + 1, epochs + 1):
            losses, rate, wait, t0 = steps.run_epoch(stepper, pool, make_batch, epoch=epoch, epochs=epochs,
                                                     steps=steps_per_epoch, prefetch=prefetch,
                                                     batch_size=batch_size, progress=progress,
                                                     before_step=before_step,
                                                     after_step=averager.update if averager else None)
            with steps.averaged(averager):
                vloss, cm = steps.validate(model, valid, sampler_v.onehot, loss_fn, n_classes, loss_alpha,
                                           loss_beta)
                row = steps.epoch_row(epoch, losses, vloss, cm, seconds=time.perf_counter() - t0, rate=rate,
                                      wait=wait, elapsed=time.perf_counter() - t_start)
                score = float(np.mean([row[f"val_f1_{c}"] for c in range(1, n_classes)]))
                if keep_best and score > best:
                    best = score
                    steps.save_best(model, policy, out_dir, epoch, score)
            now = time.perf_counter()
            history.append(row)
            steps.record_history(history, out_dir, n_classes, loss=loss,
                                 classes=getattr(objects_train, "attrs", {}).get("classes"))
            log.info("epoch %d: loss %.4f val_loss %.4f F1 %s (%.1f patches/s, waited %.1f s for input)",
                     epoch, row["loss"], row["val_loss"],
                     np.round([row[f"val_f1_{c}"] for c in range(1, n_classes)], 3), rate, wait)
            over = ((time_limit is not None and now - t_start > time_limit)
                    or (budget is not None and now - t_start > budget))
            if epoch % int(checkpoint_every) == 0 or epoch == epochs or over:
                steps.save_checkpoint(model, out_dir, epoch)
            if over:
                log.info("time budget reached after epoch %d", epoch)
                break
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if averager is not None:
        averager.swap_in()  # the final model is the averaged one
    return steps.save_final(model, policy, out_dir, legacy_h5), pd.DataFrame(history)
