"""The steps of :func:`tomochunk.nn.train.train`, each readable on its own.

Argument checks, inputs and object lists, the resume point, the network and its
optimiser step, one epoch of optimiser steps fed by a thread pool, validation, the
history and checkpoints, and the final model.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm.auto import tqdm

from .._log import get_logger
from ..errors import MissingError, ShapeError, ValueProblem
from ..io.volume import open_source
from ._predict import PRECISIONS
from .models import check_patch_shape, deepfinder_unet, load_model, model_info, policy_name, save_model, with_dtype

log = get_logger(__name__)

_CKPT = re.compile(r"checkpoint_epoch(\d+)\.keras$")



# --- inputs --------------------------------------------------------------------------------

def _as_reader(arr, what, key):
    """Return an object supporting numpy slicing, and its shape."""
    if isinstance(arr, (str, Path)):
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
    """``(tomos, labels, zyx)`` arrays of an object list whose tomograms are among ``keys``."""
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



# --- metrics and history -------------------------------------------------------------------

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


#: the loss names the plot title shows, by the name ``train``'s ``loss=`` takes
LOSS_NAMES = {"tversky": "Tversky loss", "pu": "PU loss", "nnpu": "PU loss", "cross_entropy": "cross-entropy",
              "crossentropy": "cross-entropy", "categorical_crossentropy": "cross-entropy", "ce": "cross-entropy"}


def plot_history(hist, path, n_classes, *, loss=None, classes=None):
    """Plot ``history.png``: loss, validation voxel F1 and recall per class, one marker per epoch.

    ``loss`` (the loss's name) and ``classes`` (``{label: name}``) default to ``hist.attrs``,
    then to "loss" and "class N". Markers show a single epoch too; epochs are integer ticks.

    Examples
    --------
    >>> import tempfile
    >>> h = pd.DataFrame({"epoch": [1], "loss": [0.5], "val_loss": [0.6], "val_f1_1": [0.7],
    ...                   "val_recall_1": [0.8]})
    >>> p = plot_history(h, Path(tempfile.mkdtemp()) / "history.png", 2, loss="tversky",
    ...                  classes={1: "ribosome"})
    >>> p.name
    'history.png'
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    attrs = getattr(hist, "attrs", {}) or {}
    loss = loss if loss is not None else attrs.get("loss")
    classes = {int(k): str(v) for k, v in (classes if classes is not None else attrs.get("classes") or {}).items()}
    title = LOSS_NAMES.get(str(loss).lower().replace("-", "_"), str(loss)) if loss else "loss"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    e = hist["epoch"]
    style = dict(marker="o", markersize=4)  # one epoch is one point: without a marker it draws nothing
    axes[0].plot(e, hist["loss"], label="train", **style)
    if "val_loss" in hist:
        axes[0].plot(e, hist["val_loss"], label="validation", **style)
    axes[0].set_title(title)
    axes[0].set_ylabel(title)
    for name, ax, label in (("f1", axes[1], "voxel F1"), ("recall", axes[2], "voxel recall")):
        for c in range(1, n_classes):
            if f"val_{name}_{c}" in hist:
                ax.plot(e, hist[f"val_{name}_{c}"], label=classes.get(c, f"class {c}"), **style)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(label)
        ax.set_title(f"validation {label} per class")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(e) == 1:  # a lone point sits in a readable window, not on an axis edge
            ax.set_xlim(float(e.iloc[0]) - 1, float(e.iloc[0]) + 1)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


# --- the network and its step -------------------------------------------------------------

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




def latest_checkpoint(out_dir: Path):
    """``(epoch, path)`` of the newest ``checkpoint_epochNNNN.keras`` in ``out_dir`` (``(0, None)``: none)."""
    found = [(int(m.group(1)), p) for p in out_dir.glob("checkpoint_epoch*.keras")
             if (m := _CKPT.search(p.name))]
    return max(found) if found else (0, None)


_latest_checkpoint = latest_checkpoint


# --- the steps of train() ------------------------------------------------------------------

def check_args(n_classes, patch_size, anisotropic, augment, micro_batch, precision, **counts):
    """``(n_classes, patch, augment)`` once every argument that needs no data is valid.

    ``counts`` are the arguments that must be positive integers (``batch_size=8``...).

    Examples
    --------
    >>> check_args(3, 48, False, None, 2, "float32", epochs=1)
    (3, (48, 48, 48), 'tomo')
    >>> check_args(3, 50, False, None, 2, "float32", epochs=1)
    Traceback (most recent call last):
    ...
    tomochunk.errors.ValueProblem: patch size 50 is not a multiple of 4 on every pooled axis; the network pools twice by 2 (try 48)
    """
    n_classes = int(n_classes)
    if n_classes < 2:
        raise ValueProblem(f"n_classes must be >= 2, not {n_classes}")
    patch = check_patch_shape(patch_size, anisotropic)
    for name, v in counts.items():
        if int(v) < 1:
            raise ValueProblem(f"{name} must be >= 1, not {v}")
    if micro_batch is not None and int(micro_batch) < 0:
        raise ValueProblem(f"micro_batch must be >= 1 (0 or None: the whole batch per call), not {micro_batch}")
    augment = augment if augment is not None else ("movie" if anisotropic else "tomo")
    if augment not in ("tomo", "movie", "wedge", "none", False):
        raise ValueProblem(f"augment must be 'tomo', 'movie', 'wedge' or None, not {augment!r}")
    if precision not in PRECISIONS + ("auto",):
        raise ValueProblem(f"precision must be 'float32', 'bfloat16' or 'auto', not {precision!r}")
    return n_classes, patch, augment


def open_inputs(volumes, targets, patch):
    """``{tomo: reader}`` of the volumes and of their targets, checked against each other and the patch."""
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
    return vols, tgts


def object_lists(objects_train, objects_valid, keys, n_classes):
    """The training and validation lists as ``(tomos, labels, zyx)``, labels in 1..n_classes-1."""
    obj_t = _objects(objects_train, keys, "objects_train")
    obj_v = _objects(objects_valid, keys, "objects_valid")
    for what, (_, labels, _) in (("objects_train", obj_t), ("objects_valid", obj_v)):
        if labels.max() >= n_classes or labels.min() < 1:
            raise ValueProblem(f"{what} has class labels {sorted(set(labels.tolist()))} but n_classes="
                               f"{n_classes} (labels 1..n_classes-1; 0 is background)")
    return obj_t, obj_v


def loss_function(loss, n_classes, *, tau, alpha, beta, ce_weight, class_weights):
    """``(loss_fn, ignore_label)``: the Keras loss, and the target value it ignores (None for Tversky)."""
    from .pu import make_loss  # imports keras

    if class_weights is not None:
        if len(class_weights) != n_classes:
            raise ValueProblem(f"class_weights needs {n_classes} values (one per class), got {list(class_weights)}")
        if not ce_weight:
            raise ValueProblem("class_weights weight the cross-entropy term: set ce_weight > 0 too")
    loss_fn = make_loss(loss, tau=tau, alpha=alpha, beta=beta, ce_weight=ce_weight, class_weights=class_weights)
    return loss_fn, (None if is_tversky(loss_fn) else n_classes)  # our other losses ignore an extra channel


def is_tversky(loss_fn) -> bool:
    from .losses import TverskyLoss  # imports keras

    return isinstance(loss_fn, TverskyLoss)


def regions_by_tomo(region, keys):
    """``region`` for every tomogram (one box or mask for all, or a dict keyed by tomogram)."""
    if region is not None and not isinstance(region, dict):
        return {k: region for k in keys}
    if region is not None:
        return {str(k): v for k, v in region.items()}
    return None


def resume_point(resume, out_dir: Path):
    """``(start_epoch, model or None, history rows)`` to continue from (``resume``: True or a checkpoint)."""
    if not resume:
        return 0, None, []
    if resume is True:
        start, ckpt = latest_checkpoint(out_dir)
    else:
        ckpt = Path(resume)
        if not ckpt.exists():
            raise MissingError("checkpoint does not exist", ckpt)
        m = _CKPT.search(ckpt.name)
        start = int(m.group(1)) if m else 0
    if ckpt is None:
        log.info("no checkpoint in %s: starting from scratch", out_dir)
        return start, None, []
    import keras

    from .losses import TverskyLoss
    from .pu import CUSTOM_OBJECTS

    model = keras.saving.load_model(ckpt, custom_objects={"TverskyLoss": TverskyLoss, **CUSTOM_OBJECTS})
    history = []
    hpath = out_dir / "history.csv"
    if hpath.exists():
        h = pd.read_csv(hpath)
        history = h[h["epoch"] <= start].to_dict("records")
    log.info("resuming from %s (epoch %d)", ckpt, start)
    return start, model, history


def prepare_model(model, *, n_classes, filters, anisotropic, precision, lr, loss_fn, batch_size, micro_batch):
    """``(model, stepper, policy)``: the network in ``precision``, compiled, and what runs its steps
    (a micro-batched view sharing its optimiser, or the model itself)."""
    import keras

    if model is None or isinstance(model, (str, Path)):
        model = (deepfinder_unet(n_classes, filters=filters, anisotropic=anisotropic) if model is None
                 else load_model(model))
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
    if not model.optimizer.built:
        # TensorFlow traces a step twice when the step creates variables (the optimiser's
        # moments); built here, the first step traces once: 11.7 s -> 5.9 s for a small U-Net
        model.optimizer.build(model.trainable_variables)
    return model, stepper, policy


def run_epoch(stepper, pool, make_batch, *, epoch, epochs, steps, prefetch, batch_size, progress,
              before_step=None, after_step=None):
    """One epoch of optimiser steps on batches prepared ``prefetch`` ahead by ``pool``.

    ``before_step(epoch, step)`` runs before each step (it sets the learning rate; ``False``
    ends the epoch there: the wall-clock budget), ``after_step()`` after it (weight average).

    Returns ``(losses, patches_per_s, input_wait_s, t0)``: the rate is the steady state, from
    the end of the first step (graph tracing) to the end of the last.
    """
    t0 = time.perf_counter()
    queue, nxt, wait, losses = deque(), 0, 0.0, []
    bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
    t_first = None
    for step in range(steps):
        if before_step is not None and before_step(epoch, step) is False:
            break
        while nxt < steps and len(queue) < int(prefetch):
            queue.append(pool.submit(make_batch, epoch, nxt))
            nxt += 1
        tw = time.perf_counter()
        x, y = queue.popleft().result()
        wait += time.perf_counter() - tw
        loss = stepper.train_on_batch(x, y)
        losses.append(float(np.asarray(loss[0] if isinstance(loss, (list, tuple)) else loss)))
        if after_step is not None:
            after_step()
        if step == 0:
            t_first = time.perf_counter()
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    t_end = time.perf_counter()
    done = len(losses)
    if done > 1:   # steady state: leave out the first step (graph tracing)
        rate = (done - 1) * batch_size / (t_end - t_first)
    else:
        rate = done * batch_size / max(t_end - t0, 1e-9)
    return losses, rate, wait, t0


def validate(model, valid, onehot, loss_fn, n_classes, alpha, beta):
    """``(losses, confusion)`` of ``model`` on the fixed validation batches; ignored voxels are not scored."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    vloss = []
    tversky = is_tversky(loss_fn)
    if tversky:
        from .losses import tversky_numpy
    for x, y in valid:
        prob = np.asarray(model.predict_on_batch(x))
        if tversky:
            vloss.append(tversky_numpy(onehot(y), prob, alpha, beta))
        else:
            vloss.append(float(np.asarray(loss_fn(onehot(y), prob))))
        use = y < n_classes
        cm += np.bincount(y[use] * n_classes + prob.argmax(-1)[use],
                          minlength=n_classes ** 2).reshape(n_classes, n_classes)
    return vloss, cm


def epoch_row(epoch, losses, vloss, cm, *, seconds, rate, wait, elapsed):
    """One row of the history: losses, accuracy, per-class precision / recall / F1, optimiser
    steps run (fewer than asked where the time budget ended the epoch), timings.

    Examples
    --------
    >>> row = epoch_row(1, [0.5], [0.4], np.array([[5, 1], [0, 4]]), seconds=1.0, rate=8.0, wait=0.0,
    ...                 elapsed=1.0)
    >>> row["val_accuracy"], round(row["val_f1_1"], 3)
    (0.9, 0.889)
    """
    prec, rec, f1 = class_scores(cm)
    # no loss where the budget ran out before the epoch's first step
    row = {"epoch": epoch, "loss": float(np.mean(losses)) if len(losses) else float("nan"), "val_loss": float(np.mean(vloss)),
           "val_accuracy": float(np.trace(cm) / max(cm.sum(), 1))}
    for c in range(cm.shape[0]):
        row[f"val_precision_{c}"] = float(prec[c])
        row[f"val_recall_{c}"] = float(rec[c])
        row[f"val_f1_{c}"] = float(f1[c])
    row.update(steps=len(losses), seconds=seconds, patches_per_s=rate, input_wait_s=wait,
               elapsed_s=elapsed)
    return row


def record_history(history, out_dir: Path, n_classes, loss=None, classes=None):
    """Write ``history.csv`` and ``history.png`` (a failed plot only logs a warning)."""
    hist = pd.DataFrame(history)
    hist.to_csv(out_dir / "history.csv", index=False)
    try:
        plot_history(hist, out_dir / "history.png", n_classes, loss=loss, classes=classes)
    except Exception as exc:  # a plot must never stop a training run
        log.warning("could not plot history: %s", exc)


def save_checkpoint(model, out_dir: Path, epoch: int) -> Path:
    """``checkpoint_epochNNNN.keras`` (with the optimiser state), written under a temporary name first."""
    path = out_dir / f"checkpoint_epoch{epoch:04d}.keras"
    tmp = path.with_name(path.stem + ".tmp.keras")
    model.save(tmp)
    tmp.replace(path)
    (out_dir / "state.json").write_text(json.dumps({"epoch": epoch, "checkpoint": path.name}))
    return path


class WeightAverage:
    """Exponential moving average of a model's trainable weights (numpy, after each step).

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` so that a short run is not
    dominated by its random initial weights.

    Examples
    --------
    >>> import keras
    >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> avg = WeightAverage(m, 0.9)
    >>> _ = m.trainable_weights[1].assign([1.0])
    >>> avg.update()
    >>> round(float(avg.average[1][0]), 3)   # decay (1+0)/(10+0) = 0.1 at the first step
    0.9
    """

    def __init__(self, model, decay):
        self.model, self.decay, self.n = model, float(decay), 0
        self.average = [np.array(v, dtype=np.float32) for v in model.trainable_weights]
        self.saved = None

    def update(self):
        d = min(self.decay, (1.0 + self.n) / (10.0 + self.n))
        for a, v in zip(self.average, self.model.trainable_weights):
            a *= d
            a += (1.0 - d) * np.asarray(v, dtype=np.float32)
        self.n += 1

    def swap_in(self):
        """Put the averaged weights into the model (keeping the raw ones for :meth:`swap_out`)."""
        self.saved = [np.array(v) for v in self.model.trainable_weights]
        for v, a in zip(self.model.trainable_weights, self.average):
            v.assign(a.astype(v.dtype))

    def swap_out(self):
        for v, a in zip(self.model.trainable_weights, self.saved):
            v.assign(a)
        self.saved = None


class averaged:  # noqa: N801 (a context manager used like a function)
    """``with averaged(avg):`` runs its body with the averaged weights (``None``: the raw ones)."""

    def __init__(self, average):
        self.average = average

    def __enter__(self):
        if self.average is not None:
            self.average.swap_in()

    def __exit__(self, *exc):
        if self.average is not None:
            self.average.swap_out()


def save_best(model, policy, out_dir: Path, epoch: int, score: float) -> Path:
    """``model_best.keras`` (float32), written under a temporary name first, and ``best.json``."""
    best = model if policy is None else with_dtype(model, None)
    path = out_dir / "model_best.keras"
    tmp = path.with_name("model_best.tmp.keras")
    save_model(best, tmp)
    tmp.replace(path)
    (out_dir / "best.json").write_text(json.dumps({"epoch": epoch, "mean_val_f1": score}))
    log.info("epoch %d: best mean validation F1 so far (%.4f) -> %s", epoch, score, path)
    return path


SIZE_VOXELS = 512 ** 3   # targets larger than this (all tomograms together) are not measured


def size_stats(targets: dict, n_classes: int) -> dict | None:
    """Per-class voxel counts of the connected objects of the training targets (percentiles).

    ``{"classes": {"1": {"n": ..., "p5": ..., "p50": ..., "p95": ...}, ...}}``, for the size
    filters of picking; ``None`` when the targets hold more than ``SIZE_VOXELS`` voxels.

    Examples
    --------
    >>> lab = np.zeros((8, 8, 8), np.uint8); lab[1:3, 1:3, 1:3] = 1; lab[5:8, 5:8, 5:8] = 1
    >>> size_stats({"a": lab}, 2)["classes"]["1"]["n"]
    2
    """
    if sum(int(np.prod(t.shape)) for t in targets.values()) > SIZE_VOXELS:
        log.info("targets over %d voxels: no object size statistics saved", SIZE_VOXELS)
        return None
    sizes = {c: [] for c in range(1, n_classes)}
    for t in targets.values():
        lab = _read(t, (slice(None),) * 3)
        for c in sizes:
            comp, n = ndimage.label(lab == c)
            if n:
                sizes[c].extend(np.bincount(comp.ravel())[1:].tolist())
    out = {}
    for c, v in sizes.items():
        if v:
            p5, p50, p95 = np.percentile(v, [5, 50, 95])
            out[str(c)] = {"n": len(v), "p5": float(p5), "p50": float(p50), "p95": float(p95)}
    return {"classes": out}


def save_sizes(targets: dict, n_classes: int, out_dir: Path):
    """Write ``sizes.json`` (see :func:`size_stats`) beside the models; returns its path or None."""
    stats = size_stats(targets, n_classes)
    if stats is None:
        return None
    path = out_dir / "sizes.json"
    path.write_text(json.dumps(stats, indent=1))
    return path


def save_final(model, policy, out_dir: Path, legacy_h5: bool):
    """The final model in float32: ``model_final.keras`` (and DeepFinder's ``net_weights_FINAL.h5``)."""
    final = model if policy is None else with_dtype(model, None)
    save_model(final, out_dir / "model_final.keras",
               legacy_h5=(out_dir / "net_weights_FINAL.h5") if legacy_h5 else None)
    return final
