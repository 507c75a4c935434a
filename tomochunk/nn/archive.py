"""One archive per trained model: weights plus JSON metadata, and Ais ``.scnm`` import.

Our archive (suffix ``.tcm`` by convention) is an uncompressed tar holding

* ``metadata.json``: ``format: "tomochunk-model"``, ``architecture`` (a registry
  name) and its ``options``, ``input_shape``, ``n_classes``, ``title``,
  ``pixel_size`` (Å), ``box_size``, ``threshold``, ``overlap``, ``emit``,
  ``absorb``, ``classes`` (names), ``normalize``;
* ``model.weights.h5``: the weights (Keras 3, backend-neutral); the network
  is rebuilt from the registry and the weights loaded into it.

Ais ``.scnm`` files are uncompressed tars holding ``<name>_weights.h5`` (a
whole Keras 2 model) and ``<name>_metadata.json`` (``title``, ``apix``,
``box_size``, ``threshold``, ``overlap``, ``emit``, ``absorb``, ...). They load
with :func:`load_archive` as well; ``apix`` becomes ``pixel_size``.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._log import get_logger
from ..errors import ExistsError, FormatError, MissingError, TomochunkError
from .registry import create_model, ensure_registered, get_architecture

log = get_logger(__name__)

FORMAT = "tomochunk-model"
META_NAME = "metadata.json"
WEIGHTS_NAME = "model.weights.h5"


@dataclass
class ModelInfo:
    """Metadata travelling with a network (everything the segmentation needs besides the weights)."""

    title: str = "model"
    architecture: str = ""
    origin: str = ""                  # where a user architecture came from: information only, never run
    options: dict = field(default_factory=dict)
    input_shape: tuple | None = None
    n_classes: int = 1
    pixel_size: float | None = None   # Å per pixel the network was trained at
    box_size: int = 64                # tile side (pixels, at pixel_size)
    threshold: float = 0.5
    overlap: float = 0.25             # tile overlap, fraction of box_size
    emit: bool = False                # Ais competition flags
    absorb: bool = False
    classes: dict = field(default_factory=dict)   # {label: name}; one-feature models: {1: title}
    normalize: str = "tile"           # "tile": each tile to mean 0 / std 1 (as Ais); "none"
    source: str | None = None         # archive it came from
    code: str | None = None           # the .py file the user allowed for its architecture (not stored)

    @property
    def context(self) -> int:
        """Neighbouring slices each side fed as channels (0 for plain 2D, ``k`` for ``2k+1`` channels)."""
        if not self.input_shape or len(self.input_shape) != 3 or self.input_shape[-1] is None:
            return 0
        return (int(self.input_shape[-1]) - 1) // 2

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("source")
        d.pop("code")
        d["classes"] = {str(k): v for k, v in self.classes.items()}
        d["input_shape"] = None if self.input_shape is None else list(self.input_shape)
        return {"format": FORMAT, "version": 1, **d}

    @classmethod
    def from_json(cls, d: dict, source=None) -> "ModelInfo":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k not in ("source", "code")}
        if known.get("input_shape") is not None:
            known["input_shape"] = tuple(known["input_shape"])
        known["classes"] = {int(k): str(v) for k, v in (known.get("classes") or {}).items()}
        return cls(**known, source=None if source is None else str(source))


@dataclass
class FeatureModel:
    """A Keras model plus its :class:`ModelInfo`; what :func:`load_archive` returns.

    ``predict`` and the other Keras methods are forwarded to the model.
    """

    model: object
    info: ModelInfo

    def __getattr__(self, name):
        if name in ("model", "info"):
            raise AttributeError(name)
        return getattr(self.model, name)


def new_model(architecture: str, *, box_size=64, n_classes=1, channels=None, title=None, pixel_size=None,
              threshold=0.5, overlap=0.25, emit=False, absorb=False, classes=None, seed=None,
              **options) -> FeatureModel:
    """Build a registered network and wrap it with its metadata.

    ``seed`` (optional) makes the initial weights reproducible (it seeds Keras' global RNGs).

    Examples
    --------
    >>> fm = new_model("unet2d", box_size=64, title="membrane", pixel_size=10.0)
    >>> fm.info.context, fm.model.output_shape
    (0, (None, 64, 64, 1))
    """
    if seed is not None:
        import keras

        keras.utils.set_random_seed(int(seed))
    arch = get_architecture(architecture)
    origin = "" if arch.origin.startswith("tomochunk.") else arch.origin
    if arch.dims == 3:
        shape = (box_size,) * 3 + (1,)
    else:
        if channels is None:
            channels = 2 * int(options.get("context", 2)) + 1 if architecture == "unet25d" else 1
        shape = (box_size, box_size, int(channels))
    model = create_model(architecture, shape, n_classes, **options)
    title = title or architecture
    info = ModelInfo(title=title, architecture=architecture, origin=origin, options=_plain(options), input_shape=shape,
                     n_classes=int(n_classes), pixel_size=pixel_size, box_size=int(box_size),
                     threshold=float(threshold), overlap=float(overlap), emit=bool(emit), absorb=bool(absorb),
                     classes=dict(classes or ({1: title} if n_classes == 1 else {})))
    return FeatureModel(model, info)


def _plain(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def save_archive(model, path, *, overwrite=False, **info) -> Path:
    """Write one model as an archive: weights plus JSON metadata in an uncompressed tar.

    Parameters
    ----------
    model : FeatureModel or keras.Model
        A bare Keras model needs ``architecture=`` (a registry name) in ``info``.
    path : str or Path
        Output file (``.tcm`` by convention).
    **info
        :class:`ModelInfo` fields to set or override (``title``, ``pixel_size``,
        ``box_size``, ``threshold``, ``emit``, ``absorb``, ``classes``...).

    Examples
    --------
    >>> fm = new_model("eman2", box_size=64, title="carbon", pixel_size=20.0)  # doctest: +SKIP
    >>> save_archive(fm, "carbon.tcm")  # doctest: +SKIP
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExistsError("output exists; pass overwrite=True to replace it", path)
    if isinstance(model, FeatureModel):
        meta = ModelInfo(**{**asdict(model.info), **info})
        keras_model = model.model
    else:
        meta = ModelInfo(**info)
        keras_model = model
        if meta.input_shape is None:
            meta.input_shape = tuple(keras_model.input_shape[1:])
    if not meta.architecture:
        raise FormatError("cannot archive a model without its registry architecture name "
                          "(pass architecture=...)", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp) / WEIGHTS_NAME
        keras_model.save_weights(str(w))
        blob = json.dumps(meta.to_json(), indent=1).encode()
        part = path.with_name(path.name + ".part")
        with tarfile.open(part, "w") as tar:
            ti = tarfile.TarInfo(META_NAME)
            ti.size = len(blob)
            tar.addfile(ti, io.BytesIO(blob))
            tar.add(w, arcname=WEIGHTS_NAME)
        os.replace(part, path)
    return path


def read_archive_info(path) -> ModelInfo:
    """The metadata of an archive (ours or Ais ``.scnm``) without building the network."""
    return _open(path, build=False).info


def load_archive(path, *, compile=False, allow_code=None) -> FeatureModel:
    """Load a model archive written by :func:`save_archive`, or an Ais ``.scnm`` file.

    Archives are data: loading one never imports or runs code that it names. Its
    architecture must be a built-in registry name (or one this process registered);
    an architecture defined in a ``.py`` file is rebuilt only from the file passed here.
    Ais files load with Keras' safe mode on.

    Parameters
    ----------
    path : str or Path
    compile : bool
        Ais only: compile the stored model (needs its custom loss); default False.
    allow_code : str or Path, optional
        A ``.py`` file following the registry's template that defines the archive's
        architecture (its ``create``), trusted by the user.

    Returns
    -------
    FeatureModel
        ``.model`` (Keras) and ``.info`` (:class:`ModelInfo`).

    Examples
    --------
    >>> fm = load_archive("membrane.scnm")  # doctest: +SKIP
    >>> fm.info.pixel_size, fm.info.box_size, fm.info.threshold  # doctest: +SKIP
    """
    return _open(path, build=True, compile=compile, allow_code=allow_code)


def _members(tar, path):
    names = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}
    return names


def _open(path, *, build, compile=False, allow_code=None):
    path = Path(path)
    if not path.exists():
        raise MissingError("no such model archive", path)
    try:
        tar = tarfile.open(path, "r")
    except tarfile.TarError as exc:
        raise FormatError(f"not a model archive (not a tar file: {exc})", path) from None
    with tar, tempfile.TemporaryDirectory() as tmp:
        names = _members(tar, path)
        if META_NAME in names:
            meta = _read_json(tar, names[META_NAME], path)
            if meta.get("format") != FORMAT:
                raise FormatError(f"{META_NAME} is not a {FORMAT} record", path)
            info = ModelInfo.from_json(meta, path)
            if not build:
                return FeatureModel(None, info)
            if WEIGHTS_NAME not in names:
                raise FormatError(f"archive has no {WEIGHTS_NAME}", path)
            ensure_registered(info.architecture, allow_code, path)
            if allow_code is not None:
                info.code = str(Path(allow_code).resolve())
            try:
                model = create_model(info.architecture, info.input_shape, info.n_classes, **info.options)
            except TomochunkError:
                raise
            except Exception as exc:
                raise FormatError(f"cannot build architecture {info.architecture!r} with the archive's "
                                  f"input_shape and options ({type(exc).__name__}: {exc})", path) from None
            w = Path(tmp) / WEIGHTS_NAME
            w.write_bytes(tar.extractfile(names[WEIGHTS_NAME]).read())
            try:
                model.load_weights(str(w))
            except Exception as exc:
                raise FormatError(f"weights do not fit architecture {info.architecture!r} ({exc})", path) from None
            return FeatureModel(model, info)
        metas = [n for n in names if n.endswith("_metadata.json")]
        weights = [n for n in names if n.endswith("_weights.h5")]
        if not metas or not weights:
            raise FormatError("not a model archive: no metadata.json, nor an Ais *_metadata.json with "
                              "*_weights.h5", path)
        info = _ais_info(_read_json(tar, names[metas[0]], path), path)
        if not build:
            return FeatureModel(None, info)
        h5 = Path(tmp) / "model.h5"
        h5.write_bytes(tar.extractfile(names[weights[0]]).read())
        import keras

        try:
            model = keras.saving.load_model(str(h5), compile=compile, safe_mode=True)
        except Exception as exc:
            raise FormatError(f"cannot load the Keras model in this .scnm ({type(exc).__name__}: {exc})",
                              path) from None
        info.input_shape = tuple(model.input_shape[1:])
        info.n_classes = int(model.output_shape[-1])
        return FeatureModel(model, info)


def _read_json(tar, member, path):
    try:
        return json.loads(tar.extractfile(member).read().decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{member.name} is not valid JSON ({exc})", path) from None


def _ais_info(m: dict, path) -> ModelInfo:
    title = str(m.get("title") or Path(path).stem)
    apix = m.get("apix")
    return ModelInfo(
        title=title, architecture=f"ais:{m.get('model_enum', '?')}",
        pixel_size=float(apix) if apix not in (None, -1, -1.0) else None,
        box_size=int(m.get("box_size") or 64), threshold=float(m.get("threshold", 0.5)),
        overlap=float(m.get("overlap", 0.2)), emit=bool(m.get("emit", False)),
        absorb=bool(m.get("absorb", False)), classes={1: title}, normalize="tile", source=str(path))
