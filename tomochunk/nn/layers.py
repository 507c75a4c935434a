"""Keras layers of the U-Net that ``keras.layers`` lacks (backend-neutral: ``keras.ops`` only)."""

from __future__ import annotations

import keras
from keras import ops

from ..errors import ValueProblem

__all__ = ["UpConv3D"]


@keras.saving.register_keras_serializable(package="tomochunk")
class UpConv3D(keras.layers.Conv3D):
    """Nearest-neighbour up-sampling followed by a 2x2x2 ``'same'`` convolution, in one op.

    DeepFinder up-samples with ``UpSampling3D`` and then applies a 2x2x2
    ``Conv3D``. On an axis up-sampled by 2 that is ``y[2i] = (w0 + w1) x[i]``
    and ``y[2i+1] = w0 x[i] + w1 x[i+1]``: a stride-2 transposed convolution
    with the 3 taps ``(w1, w0 + w1, w0)``. It does 27 instead of 64
    multiply-adds per 8 output voxels and never builds the up-sampled tensor
    (forward and backward about 2x faster). On an axis that is not up-sampled
    it is the plain 2-tap convolution. The weights are those of the
    ``Conv3D`` it replaces: a ``(2, 2, 2, in, filters)`` kernel and a bias.

    Parameters
    ----------
    filters : int
        Output channels.
    up : tuple of 3 ints
        Up-sampling factor (1 or 2) of each spatial axis ``(z, y, x)``.
    **kwargs
        Passed to ``keras.layers.Conv3D`` (``activation``, ``dtype``, ``name``...).

    Examples
    --------
    >>> UpConv3D(8, up=(1, 2, 2)).compute_output_shape((None, 5, 4, 4, 16))
    (None, 5, 8, 8, 8)
    """

    def __init__(self, filters, up=(2, 2, 2), **kwargs):
        # from_config hands back Conv3D's own keys; the layer fixes them
        for key in ("kernel_size", "padding", "data_format", "strides", "dilation_rate", "groups"):
            kwargs.pop(key, None)
        super().__init__(filters, (2, 2, 2), padding="same", data_format="channels_last", **kwargs)
        self.up = tuple(int(u) for u in up)
        if len(self.up) != 3 or any(u not in (1, 2) for u in self.up):
            raise ValueProblem(f"UpConv3D up-samples each axis by 1 or 2, not {up!r}")

    def convolution_op(self, inputs, kernel):
        for axis, u in enumerate(self.up):
            w0 = kernel[(slice(None),) * axis + (slice(0, 1),)]
            w1 = kernel[(slice(None),) * axis + (slice(1, 2),)]
            kernel = ops.concatenate([w1, w0 + w1, w0] if u == 2 else [w1, w0], axis=axis)
        kernel = ops.transpose(kernel, (0, 1, 2, 4, 3))  # conv_transpose wants [..., out, in]
        y = ops.conv_transpose(inputs, kernel, strides=self.up, padding="valid",
                               data_format="channels_last")
        # "valid" puts one extra voxel in front of every axis (u * n + 1 voxels). Not y[:, 1:]:
        # TensorFlow's gradient of a strided slice is 2-3x slower here. split where the sizes are
        # static (training), because the Pad in ops.slice's gradient makes grappler's remapper
        # fail; ops.slice where they are not (TensorFlow's inference on blocks of varying size).
        if None in y.shape[1:4]:
            size = list(ops.shape(y))
            size[1:4] = [n - 1 for n in size[1:4]]
            return ops.slice(y, (0, 1, 1, 1, 0), size)
        for axis in (1, 2, 3):
            y = ops.split(y, [1], axis=axis)[1]
        return y

    def compute_output_shape(self, input_shape):
        spatial = [None if n is None else n * u for n, u in zip(input_shape[1:4], self.up)]
        return (input_shape[0], *spatial, self.filters)

    def get_config(self):
        return {**super().get_config(), "up": self.up}
