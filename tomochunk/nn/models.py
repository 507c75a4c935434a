"""The DeepFinder 3D U-Net in backend-neutral Keras 3, and its weight files.

The network is the one of DeepFinder (Moebel et al., Nature Methods 2021): a
3D U-Net with two poolings, 32/48/64 filters and a per-voxel softmax. It is
rebuilt here from the published description with ``keras.layers`` only, so
it runs under the tensorflow, jax and torch backends. Its two up-sampling
steps (``UpSampling3D`` + a 2x2x2 ``Conv3D`` in DeepFinder) are one
:class:`~tomochunk.nn.layers.UpConv3D` each: the same weights and maths,
about half the time.

Weight files
------------
``load_model`` reads

* our ``.keras`` files (written by :func:`save_model`);
* DeepFinder's legacy HDF5 files written by Keras 2.x (tf-keras), either weights only
  (``net_weights_*.h5`` from ``model.save_weights``) or a full model
  (``model.save``).

Legacy weights are assigned **by layer order** (the order of the layers that
hold weights), never by name: auto-generated names (``conv3d_7``...) differ
between sessions, and name matching silently skips layers.

Patch sizes: with two poolings every spatial size must be a multiple of 4
(of 4 in y and x only for the anisotropic movie variant, which pools
``(1, 2, 2)`` and so keeps the time resolution).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from zipfile import BadZipFile, ZipFile

import numpy as np

from .._log import get_logger
from ..errors import FormatError, MissingError, ShapeError, ValueProblem

log = get_logger(__name__)

__all__ = ["deepfinder_unet", "load_model", "save_model", "model_info", "check_patch_shape", "with_dtype",
           "policy_name",
           "DEFAULT_FILTERS", "SMALL_FILTERS"]

#: DeepFinder's filter counts at the three resolution levels.
DEFAULT_FILTERS = (32, 48, 64)
#: A light variant (about 16x fewer multiply-adds) for tests, demos and memory benchmarks.
SMALL_FILTERS = (8, 12, 16)

# Layer sequence of the network, in the order in which layers holding weights
# are created (this order is the contract with legacy weight files):
# (name in the file written by Keras 2, level of the filter count, kernel size).
# Level "out" is the 1x1x1 softmax classifier.
_CONV_PLAN = (
    (0, 3), (0, 3),                      # encoder level 1 -> "high" skip
    (1, 3), (1, 3),                      # encoder level 2 -> "mid" skip
    (2, 3), (2, 3), (2, 3), (2, 3),      # bottleneck
    (2, 2),                              # after the first up-sampling
    (1, 3), (1, 3),                      # decoder level 2 (after concat with mid)
    (1, 2),                              # after the second up-sampling
    (0, 3), (0, 3),                      # decoder level 1 (after concat with high)
    ("out", 1),                          # classifier
)
_N_CONV = len(_CONV_PLAN)


def _conv_name(i: int) -> str:
    # Keras 2 names the first Conv3D "conv3d", then "conv3d_1", ...; using the
    # same names makes our legacy files look like DeepFinder's own.
    return "conv3d" if i == 0 else f"conv3d_{i}"


def _resolve_filters(filters) -> tuple[int, int, int]:
    if isinstance(filters, str):
        if filters == "small":
            return SMALL_FILTERS
        if filters in ("default", "deepfinder"):
            return DEFAULT_FILTERS
        raise ValueProblem(f"filters must be 3 integers, 'default' or 'small', not {filters!r}")
    try:
        f = tuple(int(v) for v in filters)
    except TypeError:
        raise ValueProblem(f"filters must be 3 integers, not {filters!r}") from None
    if len(f) != 3 or min(f) < 1:
        raise ValueProblem(f"filters must be 3 positive integers, not {filters!r}")
    return f


def check_patch_shape(patch_shape, anisotropic: bool = False, name: str = "patch size") -> tuple:
    """Validate a patch shape for the U-Net and return it as a 3-tuple.

    Parameters
    ----------
    patch_shape : int or sequence of 3 ints
        Patch size (cube) or ``(z, y, x)`` / ``(t, y, x)``.
    anisotropic : bool
        The movie variant pools only y and x, so z/t may be any size.
    name : str
        Name of the argument, for the error message.

    Raises
    ------
    ValueProblem
        When a size is not a positive multiple of 4 (the network pools twice).

    Examples
    --------
    >>> check_patch_shape(48)
    (48, 48, 48)
    """
    if np.isscalar(patch_shape):
        shape = (int(patch_shape),) * 3
    else:
        shape = tuple(int(v) for v in patch_shape)
    if len(shape) != 3:
        raise ValueProblem(f"{name} must be one integer or 3 integers, not {patch_shape!r}")
    for axis, n in enumerate(shape):
        need = 1 if (anisotropic and axis == 0) else 4
        if n < need or n % need:
            raise ValueProblem(f"{name} {patch_shape!r} is not a multiple of 4 on every pooled axis; "
                               "the network pools twice by 2 (try "
                               f"{max(4, int(round(n / 4)) * 4)})")
    return shape


def deepfinder_unet(n_classes: int, patch_size=None, *, filters=DEFAULT_FILTERS,
                    anisotropic: bool = False, dtype=None, name: str = "deepfinder_unet"):
    """Build DeepFinder's 3D U-Net.

    Parameters
    ----------
    n_classes : int
        Number of output classes, background included (>= 2).
    patch_size : int or tuple of 3 ints, optional
        Fixed input size. ``None`` (default) accepts any size that is a
        multiple of 4 on the pooled axes.
    filters : tuple of 3 ints or {'default', 'small'}
        Filter counts of the three resolution levels. DeepFinder uses
        ``(32, 48, 64)``; ``'small'`` is ``(8, 12, 16)``.
    anisotropic : bool
        Pool and up-sample by ``(1, 2, 2)`` instead of ``(2, 2, 2)``: the
        variant for ``[t, y, x]`` movies, which keeps the time resolution.
        It has the same weights (shapes) as the isotropic network.
    dtype : str, optional
        Keras dtype policy of the hidden layers, e.g. ``"mixed_bfloat16"``
        (weights stay float32, convolutions run in bfloat16: about 3-4x faster
        training on CPUs with AMX/AVX512-BF16). The softmax layer is always float32.
    name : str
        Keras model name.

    Returns
    -------
    keras.Model
        Input ``[batch, z, y, x, 1]`` float32, output ``[batch, z, y, x,
        n_classes]`` softmax probabilities.

    Examples
    --------
    >>> model = deepfinder_unet(3, filters="small")
    >>> model.output_shape
    (None, None, None, None, 3)
    """
    import keras
    from keras import layers

    from .layers import UpConv3D

    n_classes = int(n_classes)
    if n_classes < 2:
        raise ValueProblem(f"n_classes must be >= 2 (background + at least one class), not {n_classes}")
    f = _resolve_filters(filters)
    if patch_size is None:
        shape = (None, None, None, 1)
    else:
        shape = check_patch_shape(patch_size, anisotropic) + (1,)
    pool = (1, 2, 2) if anisotropic else (2, 2, 2)

    counter = iter(range(_N_CONV))

    def conv(x, level, k, up=None):
        i = next(counter)
        n = n_classes if level == "out" else f[level]
        act = "softmax" if level == "out" else "relu"
        policy = "float32" if (level == "out" and dtype is not None) else dtype
        if up is not None:
            return UpConv3D(n, up=up, activation=act, dtype=policy, name=_conv_name(i))(x)
        return layers.Conv3D(n, (k, k, k), padding="same", activation=act, dtype=policy,
                             data_format="channels_last", name=_conv_name(i))(x)

    # Layer creation order below follows _CONV_PLAN: it defines the weight order.
    inp = keras.Input(shape=shape, name="input_1")
    x = conv(inp, 0, 3)
    high = conv(x, 0, 3)
    x = layers.MaxPooling3D(pool, dtype=dtype, name="max_pooling3d")(high)
    x = conv(x, 1, 3)
    mid = conv(x, 1, 3)
    x = layers.MaxPooling3D(pool, dtype=dtype, name="max_pooling3d_1")(mid)
    for _ in range(4):
        x = conv(x, 2, 3)
    # UpSampling3D + 2x2x2 Conv3D in DeepFinder, fused (same weights, same maths).
    x = conv(x, 2, 2, up=pool)
    x = layers.Concatenate(axis=-1, dtype=dtype, name="concatenate")([x, mid])
    x = conv(x, 1, 3)
    x = conv(x, 1, 3)
    x = conv(x, 1, 2, up=pool)
    x = layers.Concatenate(axis=-1, dtype=dtype, name="concatenate_1")([x, high])
    x = conv(x, 0, 3)
    x = conv(x, 0, 3)
    out = conv(x, "out", 1)
    return keras.Model(inp, out, name=name)


def model_info(model) -> dict:
    """Describe a U-Net built by :func:`deepfinder_unet`.

    Returns
    -------
    dict
        ``n_classes``, ``filters``, ``anisotropic`` and ``multiple`` (the
        size each input axis must be a multiple of, e.g. ``(4, 4, 4)`` or
        ``(1, 4, 4)``).

    Examples
    --------
    >>> model_info(deepfinder_unet(3, filters="small"))["multiple"]
    (4, 4, 4)
    """
    import keras

    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv3D)]
    pools = [layer for layer in model.layers if layer.__class__.__name__ == "MaxPooling3D"]
    aniso = bool(pools) and tuple(pools[0].pool_size) == (1, 2, 2)
    depth = 2 ** len(pools)
    return {
        "n_classes": int(model.output_shape[-1]),
        "filters": tuple(int(convs[i].filters) for i in (0, 2, 4)) if len(convs) >= 5 else None,
        "anisotropic": aniso,
        "multiple": (1 if aniso else depth, depth, depth),
    }


def with_dtype(model, dtype=None):
    """The same U-Net (same weights) with another dtype policy (``None`` = float32).

    Examples
    --------
    >>> fast = with_dtype(deepfinder_unet(3, filters="small"), "mixed_bfloat16")
    """
    info = model_info(model)
    out = deepfinder_unet(info["n_classes"], filters=info["filters"], anisotropic=info["anisotropic"],
                          dtype=dtype)
    out.set_weights(model.get_weights())
    return out


def policy_name(model) -> str:
    """Name of the dtype policy of a U-Net's hidden layers (``'float32'``, ``'mixed_bfloat16'``...).

    Examples
    --------
    >>> policy_name(deepfinder_unet(3, filters="small"))
    'float32'
    """
    return getattr(getattr(model.layers[1], "dtype_policy", None), "name", "float32")


def _fused(model):
    """A U-Net saved with DeepFinder's UpSampling3D + Conv3D pairs, rebuilt with UpConv3D (same weights)."""
    if not any(layer.__class__.__name__ == "UpSampling3D" for layer in model.layers):
        return model
    policy = policy_name(model)
    try:
        out = with_dtype(model, None if policy == "float32" else policy)
    except (ValueError, TypeError, IndexError):  # another architecture: keep it as it is
        return model
    log.info("%s: up-sampling layers fused into UpConv3D", model.name)
    return out


# --- weight files ----------------------------------------------------------------------------

def _decode(v):
    return v.decode("utf8") if isinstance(v, bytes) else str(v)


def _read_legacy_h5(path: Path):
    """Return ([[kernel, bias], ...] for each layer with weights, in file order, root attrs)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise FormatError(f"not an HDF5 weight file ({exc})", path) from None
    with f:
        group = f
        if "layer_names" not in f.attrs and "model_weights" in f:
            group = f["model_weights"]  # full model written by model.save(...h5)
        if "layer_names" not in group.attrs:
            raise FormatError("HDF5 file holds no Keras weights (no 'layer_names' attribute); "
                              "expected a DeepFinder net_weights_*.h5", path)
        attrs = {k: _decode(v) for k, v in f.attrs.items() if isinstance(v, (str, bytes))}
        layers = []
        for lname in group.attrs["layer_names"]:
            lname = _decode(lname)
            g = group[lname]
            wnames = [_decode(w) for w in g.attrs.get("weight_names", [])]
            if not wnames:
                continue
            values = [np.asarray(g[w]) for w in wnames]
            # kernel first, then bias, whatever the stored order
            values.sort(key=lambda a: a.ndim == 1)
            layers.append((lname, values))
    return layers, attrs


def _weights_to_config(layers, path):
    """Check a legacy layer list against DeepFinder's U-Net; return (n_classes, filters)."""
    if len(layers) != _N_CONV:
        raise FormatError(f"weight file is for another architecture: {len(layers)} layers with "
                          f"weights, DeepFinder's U-Net has {_N_CONV}", path)
    kernels = [v[0] for _, v in layers]
    for (lname, values), (level, k) in zip(layers, _CONV_PLAN):
        kern = values[0]
        if len(values) != 2 or kern.ndim != 5 or kern.shape[:3] != (k, k, k):
            raise FormatError(f"weight file is for another architecture: layer {lname} has weights "
                              f"{[v.shape for v in values]}, expected a {k}x{k}x{k} Conv3D kernel "
                              "and a bias", path)
    filters = (kernels[0].shape[-1], kernels[2].shape[-1], kernels[4].shape[-1])
    n_classes = kernels[-1].shape[-1]
    if kernels[0].shape[-2] != 1:
        raise FormatError(f"weight file is for another architecture: the network takes "
                          f"{kernels[0].shape[-2]} input channels, not 1", path)
    return int(n_classes), tuple(int(v) for v in filters)


def _set_weights_by_order(model, layers, path):
    targets = [layer for layer in model.layers if layer.weights]
    if len(targets) != len(layers):
        raise FormatError(f"weight file has {len(layers)} layers with weights, the model "
                          f"{len(targets)}", path)
    for layer, (lname, values) in zip(targets, layers):
        want = [tuple(w.shape) for w in layer.weights]
        got = [tuple(v.shape) for v in values]
        if want != got:
            raise FormatError(f"weight file is for another architecture: layer {lname} has "
                              f"shapes {got}, the model's {layer.name} expects {want}", path)
        layer.set_weights(values)


def load_model(path, *, anisotropic: bool | None = None):
    """Load a U-Net from a ``.keras`` file or a DeepFinder legacy ``.h5`` file.

    Parameters
    ----------
    path : str or Path
        ``.keras`` written by :func:`save_model`, or a Keras 2.x (tf-keras) HDF5 file
        from DeepFinder: weights only (``net_weights_FINAL.h5``) or a full
        model. For HDF5 files the architecture is rebuilt (number of classes
        and filter counts are read from the weights, the input size is left
        free) and the weights are assigned by layer order.
    anisotropic : bool, optional
        For HDF5 files: build the movie variant (pooling ``(1, 2, 2)``).
        Default: what the file records (files written by :func:`save_model`
        do), else isotropic.

    Returns
    -------
    keras.Model
        Not compiled. The result depends only on the file, so callers may
        cache it per process keyed by the path.

    Raises
    ------
    MissingError
        The file does not exist.
    FormatError
        The file is not a model/weight file, or holds weights of another
        architecture.

    Examples
    --------
    >>> model = load_model("net_weights_FINAL.h5")       # doctest: +SKIP
    >>> model.predict(patch[None, ..., None]).shape      # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise MissingError("model file does not exist", path)
    if path.suffix == ".keras" or path.is_dir():
        import keras

        from . import layers as _registers_custom_layers  # noqa: F401

        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as exc:  # keras raises many kinds here
            raise FormatError(f"cannot read Keras model ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})", path) from None
        return _fused(model)
    layers, attrs = _read_legacy_h5(path)
    n_classes, filters = _weights_to_config(layers, path)
    if anisotropic is None:
        anisotropic = _h5_anisotropic(attrs)
    model = deepfinder_unet(n_classes, filters=filters, anisotropic=anisotropic)
    _set_weights_by_order(model, layers, path)
    log.info("loaded %s: %d classes, filters %s, anisotropic=%s", path, n_classes, filters,
             anisotropic)
    return model


def _h5_anisotropic(attrs) -> bool:
    """What a legacy HDF5 file written by :func:`save_model` records; DeepFinder's own: isotropic."""
    try:
        return bool(json.loads(attrs.get("tomochunk", "{}")).get("anisotropic", False))
    except ValueError:
        return False


class ModelSpec:
    """What planning a segmentation needs of a network, read from its file: its layers' ``filters``
    and ``pool_size``, and its input and output shapes (the attributes of a Keras model that
    :mod:`tomochunk.nn._memory` and :mod:`tomochunk.nn._model` read)."""

    def __init__(self, layers, input_shape, output_shape):
        self.layers, self.input_shape, self.output_shape = layers, tuple(input_shape), tuple(output_shape)

    def __repr__(self):
        return f"ModelSpec(input_shape={self.input_shape}, output_shape={self.output_shape})"


def _layer(config):
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k in ("filters", "pool_size")}
    return SimpleNamespace(name=config.get("name"), **kw)


def _keras_spec(path: Path):
    """The spec of a functional ``.keras`` file from its ``config.json``; None where it is not plain."""
    with ZipFile(path) as z:
        cfg = json.loads(z.read("config.json"))
    if cfg.get("class_name") != "Functional":
        return None
    conf = cfg["config"]
    layers = conf["layers"]
    if any(layer.get("class_name") in ("Functional", "Sequential", "Model") for layer in layers):
        return None  # nested models: their layers are not in this list
    by_name = {layer["config"]["name"]: layer["config"] for layer in layers}

    def one(ends):
        ends = ends[0] if ends and isinstance(ends[0], list) else ends
        return by_name[ends[0]] if ends and len(ends) == 3 and ends[0] in by_name else None

    inp, out = one(conf.get("input_layers")), one(conf.get("output_layers"))
    shape = (inp or {}).get("batch_shape") or (inp or {}).get("batch_input_shape")
    if not shape or len(shape) != 5 or not (out or {}).get("filters"):
        return None
    return ModelSpec([_layer(layer["config"]) for layer in layers], shape, (None, None, None, None, out["filters"]))


def read_spec(path):
    """A network's :class:`ModelSpec`, read from its file without Keras (so without TensorFlow).

    Planning a segmentation (classes, memory per voxel, movie or tomogram) needs only this,
    so the client of a cluster does not import TensorFlow, which took 10-12 s per command on
    2 cores. A DeepFinder U-Net in legacy HDF5 or any functional ``.keras`` model is read this way;
    for anything else this returns None, and the caller loads the model (:func:`load_model`).

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "unet.keras")
    >>> _ = save_model(deepfinder_unet(3, filters="small", anisotropic=True), path)
    >>> spec = read_spec(path)
    >>> spec.output_shape[-1], spec.input_shape, spec.layers[1].filters
    (3, (None, None, None, None, 1), 8)
    >>> [layer.pool_size for layer in spec.layers if hasattr(layer, "pool_size")][0]
    (1, 2, 2)
    """
    path = Path(path)
    if not path.exists():
        raise MissingError("model file does not exist", path)
    if path.suffix == ".keras" and path.is_file():
        try:
            return _keras_spec(path)
        except (OSError, BadZipFile, KeyError, TypeError, ValueError, AttributeError):  # not a plain .keras:
            return None                                                   # load_model says what
    if path.suffix in (".h5", ".hdf5"):
        layers, attrs = _read_legacy_h5(path)
        n_classes, _ = _weights_to_config(layers, path)  # also refuses another architecture
        aniso = _h5_anisotropic(attrs)
        pool = (1, 2, 2) if aniso else (2, 2, 2)
        plan = [SimpleNamespace(name=n, filters=int(v[0].shape[-1])) for n, v in layers]
        plan[2:2] = [SimpleNamespace(name="max_pooling3d", pool_size=pool)]
        return ModelSpec(plan, (None, None, None, None, 1), (None, None, None, None, n_classes))
    return None


def _write_legacy_h5(model, path: Path):
    """Write weights in Keras 2's ``save_weights`` HDF5 layout (readable by DeepFinder)."""
    import h5py
    import keras

    layers = [layer for layer in model.layers if layer.weights]
    info = model_info(model)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        # Keras 2 keeps every layer in layer_names; only those with weights matter.
        names = []
        for i, layer in enumerate(layers):
            lname = _conv_name(i) if len(layers) == _N_CONV else layer.name
            names.append(lname)
            g = f.create_group(lname)
            wnames = []
            for w, kind in zip(layer.get_weights(), ("kernel", "bias")):
                wname = f"{lname}/{kind}:0"
                g.create_dataset(wname, data=np.asarray(w, dtype=np.float32))
                wnames.append(wname.encode("utf8"))
            g.attrs["weight_names"] = np.array(wnames, dtype="S")
        f.attrs["layer_names"] = np.array([n.encode("utf8") for n in names], dtype="S")
        f.attrs["backend"] = "tensorflow".encode("utf8")
        f.attrs["keras_version"] = "2.13.1".encode("utf8")
        f.attrs["tomochunk"] = json.dumps({"anisotropic": info["anisotropic"],
                                           "keras": keras.__version__})
    os.replace(tmp, path)


def save_model(model, path, *, legacy_h5=None):
    """Save a model as ``.keras``, and optionally as a DeepFinder weights ``.h5``.

    Parameters
    ----------
    model : keras.Model
        A network from :func:`deepfinder_unet` (or any Keras model for the
        ``.keras`` file).
    path : str or Path
        Output ``.keras`` file. A path ending in ``.h5`` writes only the
        legacy weights file.
    legacy_h5 : str or Path, optional
        Also write the weights in Keras 2's ``save_weights`` layout, which
        DeepFinder (``Segment``, ``Train.net.load_weights``) reads.

    Returns
    -------
    Path
        The main file written.

    Examples
    --------
    >>> save_model(deepfinder_unet(3), "net.keras", legacy_h5="net_weights.h5")  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".h5", ".hdf5"):
        _write_legacy_h5(model, path)
        return path
    if path.suffix != ".keras":
        raise ValueProblem(f"model file name must end in .keras or .h5, not {path.name!r}")
    tmp = path.with_name(path.stem + ".tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)
    if legacy_h5 is not None:
        _write_legacy_h5(model, Path(legacy_h5))
    return path

