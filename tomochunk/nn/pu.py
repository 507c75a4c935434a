"""Positive-unlabeled (PU) losses for sparse particle labels, written with ``keras.ops``.

Only some particles are labelled; every other voxel is *unlabeled* (it may be
background or an unlabelled particle), not negative. The non-negative PU risk
estimator (nnPU; Kiryo, Niu, du Plessis & Sugiyama, NeurIPS 2017), the loss
cet_pick trains with, estimates the negative-class risk from the unlabeled
voxels minus the positive part expected among them, with the class prior
``tau`` (the fraction of positive voxels among the unlabeled ones)::

    R = tau * R_p^+ + max(0, R_u^- - tau * R_p^-)

``R_p^+`` / ``R_p^-``: mean surrogate loss of the labelled positives classified
as positive / negative; ``R_u^-``: of the unlabeled voxels classified as
negative. When the negative-risk term drops below ``-beta`` (overfitting of the
positives), the step instead follows ``-gamma * (R_u^- - tau R_p^-)``
(the paper's gradient ascent), which is what the loss value returns then.

Particles fill a small fraction of a tomogram (``tau`` ~ 0.001-0.05), so the
positive term weighs little and training from scratch tends to sit on "all
unlabeled" for long. ``balanced=True`` uses the class-balanced risk of
imbalanced PU learning (Su, Chen & Xu, IJCAI 2021), the same estimator with
the two classes weighted equally::

    R_bal = 1/2 R_p^+ + 1/2 max(0, R_u^- - tau R_p^-) / (1 - tau)

Targets are the one-hot encoding of the label map of
:func:`tomochunk.ops.heatmap.heatmap_targets`: channel 0 unlabeled, channel 1
(hard) positive, channel 2 (optional) ignored (soft positives, voxels outside the
labelled region). Predictions are the 2-class softmax of the U-Net (channel 1
is the particle probability) or a single sigmoid channel.
"""

from __future__ import annotations

import keras
from keras import ops

from ..errors import ValueProblem
from .losses import TverskyLoss

__all__ = ["nnpu_loss", "NNPULoss", "masked_dice_ce_loss", "MaskedDiceCELoss", "make_loss", "LOSSES"]

LOSSES = ("tversky", "dice_ce", "pu", "pu_balanced")
_EPS = 1e-7


def _prob(y_pred):
    y_pred = ops.convert_to_tensor(y_pred)
    return y_pred[..., 1] if y_pred.shape[-1] >= 2 else y_pred[..., 0]


def nnpu_loss(y_true, y_pred, tau: float, beta: float = 0.0, gamma: float = 1.0, surrogate: str = "sigmoid",
              balanced: bool = False):
    """Non-negative PU loss of one-hot ``y_true`` ``[..., 2 or 3]`` and probabilities ``y_pred``.

    Parameters
    ----------
    y_true : array ``[batch, z, y, x, k]``
        One-hot: channel 0 unlabeled, 1 positive, 2 (optional) ignored.
    y_pred : array ``[batch, z, y, x, c]``
        Softmax (particle probability in channel 1) or one sigmoid channel.
    tau : float
        Class prior: expected fraction of positive voxels among the unlabeled ones.
    beta, gamma : float
        nnPU's threshold and step factor (paper defaults 0 and 1).
    surrogate : {"sigmoid", "logistic"}
        Per-voxel loss: sigmoid ``1 - p`` / ``p`` (bounded, the paper's choice)
        or logistic ``-log p`` / ``-log(1 - p)``.
    balanced : bool
        Weigh the positive and negative risks equally (module doc).

    Examples
    --------
    >>> import numpy as np
    >>> y = np.eye(3, dtype="float32")[np.array([[0, 1, 2, 0]])]
    >>> p = np.array([[[0.9, 0.1], [0.1, 0.9], [0.5, 0.5], [0.9, 0.1]]], "float32")
    >>> round(float(nnpu_loss(y, p, tau=0.1)), 4)
    0.02
    """
    p = _prob(y_pred)
    y_true = ops.cast(y_true, p.dtype)
    pos = y_true[..., 1]
    unl = y_true[..., 0]
    if surrogate == "sigmoid":
        l_pos, l_neg = 1.0 - p, p
    elif surrogate == "logistic":
        pc = ops.clip(p, _EPS, 1.0 - _EPS)
        l_pos, l_neg = -ops.log(pc), -ops.log(1.0 - pc)
    else:
        raise ValueError(f"surrogate must be 'sigmoid' or 'logistic', not {surrogate!r}")
    n_p = ops.maximum(ops.sum(pos), 1.0)
    n_u = ops.maximum(ops.sum(unl), 1.0)
    r_pp = ops.sum(pos * l_pos) / n_p
    r_pn = ops.sum(pos * l_neg) / n_p
    r_un = ops.sum(unl * l_neg) / n_u
    neg = r_un - tau * r_pn
    if balanced:
        w_p, w_n = 0.5, 0.5 / (1.0 - tau)
    else:
        w_p, w_n = tau, 1.0
    return ops.where(neg < -beta, -gamma * w_n * neg, w_p * r_pp + w_n * neg)


@keras.saving.register_keras_serializable(package="tomochunk")
class NNPULoss(keras.losses.Loss):
    """:func:`nnpu_loss` as a serialisable Keras loss.

    Examples
    --------
    >>> model.compile(optimizer="adam", loss=NNPULoss(tau=0.02))  # doctest: +SKIP
    """

    def __init__(self, tau: float = 0.05, beta: float = 0.0, gamma: float = 1.0, surrogate: str = "sigmoid",
                 balanced: bool = False, name: str = "nnpu", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0 < float(tau) < 1:
            raise ValueProblem(f"tau (class prior) must be in (0, 1), not {tau}")
        if surrogate not in ("sigmoid", "logistic"):
            raise ValueProblem(f"surrogate must be 'sigmoid' or 'logistic', not {surrogate!r}")
        self.tau, self.beta, self.gamma = float(tau), float(beta), float(gamma)
        self.surrogate = surrogate
        self.balanced = bool(balanced)

    def call(self, y_true, y_pred):
        return nnpu_loss(y_true, y_pred, self.tau, self.beta, self.gamma, self.surrogate, self.balanced)

    def get_config(self):
        return {**super().get_config(), "tau": self.tau, "beta": self.beta, "gamma": self.gamma,
                "surrogate": self.surrogate, "balanced": self.balanced}


def masked_dice_ce_loss(y_true, y_pred, ce_weight: float = 1.0):
    """Soft Dice + ``ce_weight`` × cross-entropy over the voxels that are not ignored.

    ``y_true`` has the ``c`` channels of ``y_pred`` plus optional extra
    channels marking ignored voxels (soft positives, outside the labelled
    region); without them this is :class:`tomochunk.nn.losses.DiceCrossEntropyLoss`.
    Unlabeled voxels count as background: this is the plain (non-PU) baseline.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.eye(2, dtype="float32")[np.zeros((1, 4, 4, 4), int)]
    >>> float(masked_dice_ce_loss(y, np.clip(y, 1e-6, 1))) < 1e-3
    True
    """
    y_pred = ops.convert_to_tensor(y_pred)
    c = y_pred.shape[-1]
    y_true = ops.cast(y_true, y_pred.dtype)
    t = y_true[..., :c]
    w = ops.sum(t, axis=-1, keepdims=True)  # 0 where an extra (ignore) channel is set
    axes = tuple(range(len(y_pred.shape) - 1))
    pw = y_pred * w
    tp = ops.sum(pw * t, axis=axes)
    fp = ops.sum(pw * (1.0 - t), axis=axes)
    fn = ops.sum((1.0 - y_pred) * t, axis=axes)
    # +1 smoothing: a class absent from the patch and not predicted scores 1, not 0/0
    dice = ops.cast(c, y_pred.dtype) - ops.sum((tp + 1.0) / (tp + 0.5 * fp + 0.5 * fn + 1.0))
    ce = -ops.sum(t * ops.log(ops.clip(y_pred, _EPS, 1.0))) / ops.maximum(ops.sum(w), 1.0)
    return dice + ce_weight * ce


@keras.saving.register_keras_serializable(package="tomochunk")
class MaskedDiceCELoss(keras.losses.Loss):
    """:func:`masked_dice_ce_loss` as a serialisable Keras loss."""

    def __init__(self, ce_weight: float = 1.0, name: str = "dice_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ce_weight = float(ce_weight)

    def call(self, y_true, y_pred):
        return masked_dice_ce_loss(y_true, y_pred, self.ce_weight)

    def get_config(self):
        return {**super().get_config(), "ce_weight": self.ce_weight}


def make_loss(loss: str = "tversky", *, tau=None, alpha: float = 0.5, beta: float = 0.5, ce_weight: float = 0.0,
              class_weights=None):
    """The Keras loss named ``loss`` (``"tversky"``, ``"dice_ce"``, ``"pu"`` or ``"pu_balanced"``).

    A ``keras.losses.Loss`` instance is returned as it is.

    Examples
    --------
    >>> make_loss("pu", tau=0.05).tau
    0.05
    """
    if isinstance(loss, keras.losses.Loss):
        return loss
    if loss == "tversky":
        return TverskyLoss(alpha, beta, ce_weight, class_weights) if ce_weight else TverskyLoss(alpha, beta)
    if loss == "dice_ce":
        return MaskedDiceCELoss()
    if loss in ("pu", "pu_balanced"):
        if tau is None:
            raise ValueProblem(f"loss={loss!r} needs tau, the fraction of positive voxels (class prior)")
        return NNPULoss(tau=tau, balanced=loss == "pu_balanced")
    raise ValueProblem(f"loss must be one of {', '.join(LOSSES)}, not {loss!r}")


CUSTOM_OBJECTS = {"NNPULoss": NNPULoss, "MaskedDiceCELoss": MaskedDiceCELoss}
