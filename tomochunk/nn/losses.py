"""Segmentation losses written with ``keras.ops`` (any backend).

The Tversky loss is DeepFinder's: per class ``T_c = TP / (TP + α FP + β FN)``
with soft counts summed over the batch and all voxels, and the loss is
``n_classes - Σ_c T_c`` (range ``[0, n_classes]``). With ``α = β = 0.5`` it
is the soft Dice loss.
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
    >>> y = np.eye(2, dtype="float32")[np.zeros((1, 4, 4, 4), int)]
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

    Examples
    --------
    >>> model.compile(optimizer="adam", loss=TverskyLoss())  # doctest: +SKIP
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, name: str = "tversky", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, y_true, y_pred):
        return tversky_loss(y_true, y_pred, self.alpha, self.beta)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta}


def tversky_numpy(onehot: np.ndarray, prob: np.ndarray, alpha: float = 0.5, beta: float = 0.5) -> float:
    """The same loss in numpy (validation, without a second forward pass)."""
    axes = tuple(range(prob.ndim - 1))
    tp = (prob * onehot).sum(axes, dtype=np.float64)
    fp = (prob * (1 - onehot)).sum(axes, dtype=np.float64)
    fn = ((1 - prob) * onehot).sum(axes, dtype=np.float64)
    return float(prob.shape[-1] - (tp / (tp + alpha * fp + beta * fn)).sum())


@keras.saving.register_keras_serializable(package="tomochunk")
class DiceCrossEntropyLoss(keras.losses.Loss):
    """Soft Dice (DeepFinder's Tversky with α = β = 0.5) plus ``ce_weight`` × categorical cross-entropy.

    Dice alone can settle on "everything is background" early in training when objects are
    small (its gradient vanishes once the softmax saturates); the cross-entropy term keeps
    per-voxel gradients alive, while Dice keeps rare classes weighted.

    Examples
    --------
    >>> model.compile(optimizer="adam", loss=DiceCrossEntropyLoss())  # doctest: +SKIP
    """

    def __init__(self, ce_weight: float = 1.0, name: str = "dice_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ce_weight = float(ce_weight)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        ce = ops.mean(keras.losses.categorical_crossentropy(y_true, y_pred))
        return tversky_loss(y_true, y_pred, 0.5, 0.5) + self.ce_weight * ce

    def get_config(self):
        return {**super().get_config(), "ce_weight": self.ce_weight}
