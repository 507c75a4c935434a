"""Segmentation losses written with ``keras.ops`` (any backend).

The Tversky loss is DeepFinder's: per class ``T_c = TP / (TP + α FP + β FN)``
with soft counts summed over the batch and all voxels, and the loss is
``n_classes - Σ_c T_c`` (range ``[0, n_classes]``). With ``α = β = 0.5`` it
is the soft Dice loss. :class:`TverskyLoss` can add a weighted
cross-entropy term (``ce_weight``), which gets training out of the
all-background plateau faster.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = ["tversky_loss", "dice_loss", "TverskyLoss", "tversky_numpy"]


def tversky_loss(y_true, y_pred, alpha: float = 0.5, beta: float = 0.5):
    """Tversky loss of one-hot ``y_true`` and softmax ``y_pred`` ``[batch, z, y, x, c]``.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.eye(2, dtype="float32")[np.arange(64).reshape(1, 4, 4, 4) % 2]  # both classes present
    >>> float(tversky_loss(y, y)) < 1e-6
    True
    """
    y_true = ops.cast(y_true, y_pred.dtype if hasattr(y_pred, "dtype") else "float32")
    axes = tuple(range(len(y_pred.shape) - 1))
    tp = ops.sum(y_pred * y_true, axis=axes)
    fp = ops.sum(y_pred * (1.0 - y_true), axis=axes)
    fn = ops.sum((1.0 - y_pred) * y_true, axis=axes)
    t = tp / (tp + alpha * fp + beta * fn)
    n = ops.cast(ops.shape(y_true)[-1], t.dtype)
    return n - ops.sum(t)


def dice_loss(y_true, y_pred):
    """Soft Dice loss: :func:`tversky_loss` with ``alpha = beta = 0.5``."""
    return tversky_loss(y_true, y_pred, 0.5, 0.5)


@keras.saving.register_keras_serializable(package="tomochunk")
class TverskyLoss(keras.losses.Loss):
    """:func:`tversky_loss` as a serialisable Keras loss (saved with checkpoints).

    Parameters
    ----------
    alpha, beta : float
        Tversky weights of false positives and false negatives (0.5, 0.5: Dice).
    ce_weight : float
        Weight of an added cross-entropy term (0: none, DeepFinder's loss).
    class_weights : sequence of float, optional
        Per-class weights of the cross-entropy term (default all 1). Rare classes of a few
        voxels per patch (TIRF events: about 0.2 % of a patch) need a large weight, or the
        network first learns "background everywhere" and stays there.

    Examples
    --------
    >>> model.compile(optimizer="adam", loss=TverskyLoss())  # doctest: +SKIP
    >>> loss = TverskyLoss(ce_weight=1.0, class_weights=(1, 10, 30))  # doctest: +SKIP
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, ce_weight: float = 0.0,
                 class_weights=None, name: str = "tversky", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.ce_weight = float(ce_weight)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        loss = tversky_loss(y_true, y_pred, self.alpha, self.beta)
        if self.ce_weight:
            # Cross-entropy keeps gradients alive where the softmax saturates on background,
            # the state in which a pure Tversky loss can stall for many epochs.
            p = ops.clip(y_pred, 1e-7, 1.0)
            yt = ops.cast(y_true, p.dtype)
            if self.class_weights is not None:
                yt = yt * ops.cast(ops.convert_to_tensor(self.class_weights), p.dtype)
            ce = -ops.mean(ops.sum(yt * ops.log(p), axis=-1))
            loss = loss + self.ce_weight * ce
        return loss

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta,
                "ce_weight": self.ce_weight, "class_weights": self.class_weights}


def tversky_numpy(onehot: np.ndarray, prob: np.ndarray, alpha: float = 0.5, beta: float = 0.5) -> float:
    """The same loss in numpy (validation, without a second forward pass)."""
    axes = tuple(range(prob.ndim - 1))
    tp = (prob * onehot).sum(axes, dtype=np.float64)
    fp = (prob * (1 - onehot)).sum(axes, dtype=np.float64)
    fn = ((1 - prob) * onehot).sum(axes, dtype=np.float64)
    return float(prob.shape[-1] - (tp / (tp + alpha * fp + beta * fn)).sum())


@keras.saving.register_keras_serializable(package="tomochunk")
class DiceCrossEntropyLoss(TverskyLoss):
    """``TverskyLoss(0.5, 0.5, ce_weight)`` under the name that early checkpoints were saved with."""

    def __init__(self, ce_weight: float = 1.0, name: str = "dice_ce", **kwargs):
        kwargs.pop("alpha", None)
        kwargs.pop("beta", None)
        super().__init__(0.5, 0.5, ce_weight=ce_weight, name=name, **kwargs)
