"""Small 2D and 2.5D segmentation networks for slice-wise, one-feature-per-model segmentation.

Every network follows the registry template (:mod:`tomochunk.nn.registry`):
``create(input_shape, n_classes=1, **options)`` returns an uncompiled Keras
model whose input is ``[batch, y, x, channels]`` and whose output is
``[batch, y, x, n_classes]`` -- a sigmoid for one class (the Ais / EMAN2
convention: one network per feature), a softmax for several. ``channels > 1``
means neighbouring slices stacked as channels (2.5D): channel ``k`` of a
``2m+1``-channel input is slice ``z - m + k``.

Only ``keras.layers`` are used, so the models run under the tensorflow, jax
and torch backends. Tile sizes must be multiples of :data:`DIVISOR` (16).
"""

from __future__ import annotations

from ..errors import ValueProblem

#: Every 2D model here accepts tiles whose sides are multiples of this.
DIVISOR = 16


def _input(input_shape, default_channels=1):
    import keras

    if input_shape is None:
        input_shape = (None, None, default_channels)
    shape = tuple(None if s is None else int(s) for s in input_shape)
    if len(shape) == 2:
        shape = shape + (default_channels,)
    if len(shape) != 3:
        raise ValueProblem(f"2D models take input_shape (y, x, channels), not {input_shape!r}")
    for s in shape[:2]:
        if s is not None and s % DIVISOR:
            raise ValueProblem(f"tile size {s} is not a multiple of {DIVISOR}")
    return keras.Input(shape=shape)


def _head(x, n_classes):
    from keras import layers

    n = int(n_classes)
    if n < 1:
        raise ValueProblem(f"n_classes must be >= 1, not {n_classes}")
    return layers.Conv2D(n, 1, activation="sigmoid" if n == 1 else "softmax", name="head")(x)


def eman2(input_shape=None, n_classes=1, *, filters=40, kernel=15):
    """EMAN2-style network: a short stack of large (15x15) kernels at half resolution.

    conv 15x15 -> max-pool 2 -> conv 15x15 -> conv 15x15 -> up-sample 2 -> 1x1 classifier.
    It sees a wide context with few layers, which suits membranes and carbon edges.

    Examples
    --------
    >>> m = eman2((64, 64, 1))
    >>> m.output_shape
    (None, 64, 64, 1)
    """
    import keras
    from keras import layers

    inp = _input(input_shape)
    x = layers.Conv2D(filters, kernel, padding="same", activation="relu")(inp)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(filters, kernel, padding="same", activation="relu")(x)
    x = layers.Conv2D(filters, kernel, padding="same", activation="relu")(x)
    x = layers.UpSampling2D(2)(x)
    return keras.Model(inp, _head(x, n_classes), name="eman2")


def vggnet(input_shape=None, n_classes=1, *, filters=(32, 64, 128)):
    """Ais-style VGG-like encoder-decoder: three blocks of two 3x3 convolutions and a pool,
    then three transposed-convolution up-samplings.

    Ais' "VGGNet M" uses ``filters=(128, 256, 512)``; the default here is 16x lighter for CPUs.

    Examples
    --------
    >>> vggnet((64, 64, 1)).output_shape
    (None, 64, 64, 1)
    """
    import keras
    from keras import layers

    inp = _input(input_shape)
    x = inp
    for f in filters:
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    for f in reversed(filters):
        x = layers.Conv2DTranspose(max(f // 2, 8), 2, strides=2, padding="same")(x)
        x = layers.Conv2D(max(f // 2, 8), 3, padding="same", activation="relu")(x)
    return keras.Model(inp, _head(x, n_classes), name="vggnet")


def unet2d(input_shape=None, n_classes=1, *, filters=(16, 32, 64), channels=1):
    """A 2D U-Net: two poolings, skip connections, ``filters`` per level.

    ``channels`` (when ``input_shape`` is not given) > 1 makes it 2.5D.

    Examples
    --------
    >>> unet2d((64, 64, 1)).output_shape
    (None, 64, 64, 1)
    """
    import keras
    from keras import layers

    inp = _input(input_shape, channels)
    skips, x = [], inp
    for f in filters[:-1]:
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(filters[-1], 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(filters[-1], 3, padding="same", activation="relu")(x)
    for f, skip in zip(reversed(filters[:-1]), reversed(skips)):
        x = layers.UpSampling2D(2)(x)
        x = layers.Conv2D(f, 2, padding="same", activation="relu")(x)
        x = layers.Concatenate(axis=-1)([x, skip])
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
    return keras.Model(inp, _head(x, n_classes), name="unet2d")


def unet25d(input_shape=None, n_classes=1, *, filters=(16, 32, 64), context=2):
    """The 2.5D U-Net: the 2D U-Net fed ``2 * context + 1`` neighbouring slices as channels.

    Examples
    --------
    >>> unet25d((64, 64, 5)).input_shape
    (None, 64, 64, 5)
    """
    if input_shape is None:
        input_shape = (None, None, 2 * int(context) + 1)
    if input_shape[-1] is None or int(input_shape[-1]) % 2 == 0:
        raise ValueProblem(f"a 2.5D model needs an odd number of slices as channels, not {input_shape[-1]}")
    m = unet2d(input_shape, n_classes, filters=filters)
    m.name = "unet25d"
    return m
