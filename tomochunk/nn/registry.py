"""Networks built by name: a new architecture is one file with ``TITLE`` and ``create``.

The template::

    # my_net.py
    TITLE = "My net"                       # shown by available_models()
    def create(input_shape, n_classes=1, **options):
        ...                                # keras.layers / keras.ops only
        return keras.Model(inputs, outputs)

Ais' model files are taken as they are: ``title = "..."`` and ``create(input_shape)``
(one sigmoid output; a ``compile`` inside ``create`` is kept).

Register it with :func:`register` (a function), :func:`register_file` (a
``.py`` path) or put the module on the path and call :func:`register_module`.

Built-in names:

- ``deepfinder``: DeepFinder 3D U-Net (:func:`tomochunk.nn.models.deepfinder_unet`), input ``(z, y, x, 1)``
- ``eman2``: EMAN2-style stack of 15x15 kernels, input ``(y, x, 1)``
- ``vggnet``: Ais-style VGG-like encoder-decoder, input ``(y, x, 1)``
- ``unet2d``: 2D U-Net, input ``(y, x, 1)``
- ``unet25d``: 2.5D U-Net, neighbouring slices as channels, input ``(y, x, 2k+1)``
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .._log import get_logger
from ..errors import FormatError, MissingError, ValueProblem
from . import models2d
from .models import deepfinder_unet

log = get_logger(__name__)


@dataclass
class Architecture:
    """One registered network: its builder and how it sees data."""

    name: str
    create: Callable
    title: str
    dims: int = 2            # 2: slice-wise (channels = neighbouring slices); 3: volumetric
    defaults: dict = field(default_factory=dict)
    origin: str = ""         # "path/to/file.py" or "module:function": lets other processes rebuild it

    def __post_init__(self):
        if not self.origin:
            mod, qual = getattr(self.create, "__module__", ""), getattr(self.create, "__qualname__", "")
            if mod and qual and "<" not in qual and mod != "__main__":
                self.origin = f"{mod}:{qual}"


_REGISTRY: dict[str, Architecture] = {}
_BUILTINS_LOADED = False
_BUILTIN_NAMES = ("eman2", "vggnet", "unet2d", "unet25d", "deepfinder")


def register(name: str, create: Callable, title: str | None = None, *, dims: int = 2, overwrite: bool = False,
             **defaults) -> Architecture:
    """Register a network builder under ``name``.

    Parameters
    ----------
    name : str
        Registry key (stored in model archives, so keep it stable).
    create : callable
        ``create(input_shape, n_classes=1, **options) -> keras.Model``.
    title : str, optional
        Human-readable title (default: ``name``).
    dims : {2, 3}
        2 for slice networks (input ``(y, x, channels)``), 3 for volumetric ones.
    overwrite : bool
        Replace an existing entry of that name.
    **defaults
        Default options passed to ``create``.

    Examples
    --------
    >>> from tomochunk.nn.models2d import unet2d
    >>> _ = register("unet2d_wide", unet2d, "wide 2D U-Net", filters=(32, 64, 128))
    >>> create_model("unet2d_wide", (64, 64, 1)).output_shape
    (None, 64, 64, 1)
    """
    _load_builtins()
    if not callable(create):
        raise ValueProblem(f"create for model {name!r} is not callable")
    if name in _REGISTRY and not overwrite:
        raise ValueProblem(f"model {name!r} is already registered; pass overwrite=True to replace it")
    if dims not in (2, 3):
        raise ValueProblem(f"dims must be 2 or 3, not {dims}")
    arch = Architecture(name, create, title or name, dims, dict(defaults))
    _REGISTRY[name] = arch
    return arch


def register_module(module, name: str | None = None, *, overwrite: bool = False) -> Architecture:
    """Register a module (or module name) that defines ``TITLE`` and ``create`` (and optionally ``DIMS``)."""
    if isinstance(module, str):
        module = importlib.import_module(module)
    create = getattr(module, "create", None)
    if create is None:
        raise FormatError("model module has no create(input_shape, n_classes, ...) function",
                          getattr(module, "__file__", None))
    title = getattr(module, "TITLE", None) or getattr(module, "title", None)
    name = name or module.__name__.rsplit(".", 1)[-1]
    arch = register(name, create, title, dims=int(getattr(module, "DIMS", 2)), overwrite=overwrite)
    if getattr(module, "__file__", None) and module.__name__.startswith("tomochunk_user_model_"):
        arch.origin = str(Path(module.__file__).resolve())
    return arch


def register_file(path, name: str | None = None, *, overwrite: bool = False) -> Architecture:
    """Import a ``.py`` file following the template and register it (name: the file stem)."""
    path = Path(path)
    if not path.exists():
        raise MissingError("no such model file", path)
    spec = importlib.util.spec_from_file_location(f"tomochunk_user_model_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise FormatError(f"cannot import model file ({type(exc).__name__}: {exc})", path) from None
    return register_module(module, name or path.stem, overwrite=overwrite)


def _deepfinder_create(input_shape=None, n_classes=2, **options):
    patch = None
    if input_shape is not None and all(s is not None for s in input_shape[:3]):
        patch = tuple(int(s) for s in input_shape[:3])
    return deepfinder_unet(max(int(n_classes), 2), patch, **options)


def _load_builtins():
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    m = models2d
    _REGISTRY["eman2"] = Architecture("eman2", m.eman2, "EMAN2-style 2D stack of 15x15 kernels", 2)
    _REGISTRY["vggnet"] = Architecture("vggnet", m.vggnet, "Ais-style 2D VGG-like encoder-decoder", 2)
    _REGISTRY["unet2d"] = Architecture("unet2d", m.unet2d, "2D U-Net", 2)
    _REGISTRY["unet25d"] = Architecture("unet25d", m.unet25d, "2.5D U-Net (neighbouring slices as channels)", 2)
    _REGISTRY["deepfinder"] = Architecture("deepfinder", _deepfinder_create, "DeepFinder 3D U-Net", 3)


def ensure_registered(name: str, code=None, source=None) -> Architecture:
    """The entry of ``name`` for a model archive: a built-in name, a name this process
    registered, or one defined in ``code``, a ``.py`` file the user passed explicitly.

    Archives are data: what an archive says about where its architecture comes from
    (``origin``) is never imported or run. ``source`` (the archive) names the file in errors.

    Examples
    --------
    >>> ensure_registered("unet2d").title
    '2D U-Net'
    >>> ensure_registered("os:system", source="evil.tcm")
    Traceback (most recent call last):
    ...
    tomochunk.errors.FormatError: evil.tcm: architecture 'os:system' is not built in; pass the file that defines it explicitly (allow_code=FILE, --allow-code FILE)
    """
    _load_builtins()
    if code is not None and name not in _BUILTIN_NAMES:
        code = Path(code).resolve()
        have = _REGISTRY.get(name)
        if have is None or have.origin != str(code):
            register_file(code, name, overwrite=True)
    elif name not in _REGISTRY:
        raise FormatError(f"architecture {name!r} is not built in; pass the file that defines it "
                          "explicitly (allow_code=FILE, --allow-code FILE)", source)
    return get_architecture(name)


def user_file(name: str):
    """The ``.py`` file this process registered ``name`` from (:func:`register_file`), else None."""
    arch = _REGISTRY.get(name)
    if arch is None or name in _BUILTIN_NAMES or not arch.origin.endswith(".py"):
        return None
    return arch.origin


def get_architecture(name: str) -> Architecture:
    """The registry entry of ``name`` (raises :class:`~tomochunk.ValueProblem` listing the known names)."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueProblem(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def create_model(name: str, input_shape=None, n_classes: int = 1, **options):
    """Build the network registered as ``name``.

    Parameters
    ----------
    name : str
        A name from :func:`available_models`.
    input_shape : tuple, optional
        ``(y, x, channels)`` for 2D models, ``(z, y, x, 1)`` for 3D ones; ``None``
        sizes accept any multiple of the network's pooling.
    n_classes : int
        Output channels: 1 gives one sigmoid feature map (one model per
        feature); more give a softmax with class 0 = background.
    **options
        Passed to the builder (e.g. ``filters``).

    Examples
    --------
    >>> m = create_model("eman2", (64, 64, 1))
    >>> m.output_shape
    (None, 64, 64, 1)
    """
    arch = get_architecture(name)
    kw = {**arch.defaults, **options}
    takes_classes, takes_options = _accepts(arch.create)
    if takes_classes:
        model = arch.create(input_shape, n_classes, **kw) if takes_options or not kw else None
    else:  # Ais' template: create(input_shape), one sigmoid output
        model = arch.create(input_shape, **kw) if takes_options or not kw else None
    if model is None:
        raise ValueProblem(f"model {name!r} takes no options, got {sorted(kw)}")
    out = getattr(model, "output_shape", None)
    if not takes_classes and out is not None and out[-1] != n_classes:
        raise ValueProblem(f"model {name!r} (create(input_shape)) has {out[-1]} outputs, not n_classes={n_classes}")
    log.debug("built %s (%s) with %d parameters", name, arch.title, model.count_params())
    return model


def _accepts(create) -> tuple[bool, bool]:
    """Whether ``create`` takes ``n_classes`` (a second positional parameter) and keyword options.

    Ais' template is ``create(input_shape)``; ours is ``create(input_shape, n_classes=1, **options)``.

    Examples
    --------
    >>> _accepts(lambda input_shape: None), _accepts(lambda input_shape, n_classes=1, **kw: None)
    ((False, False), (True, True))
    """
    try:
        params = list(inspect.signature(create).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable: assume our template
        return True, True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    options = any(p.kind == p.VAR_KEYWORD for p in params) or \
        any(p.kind == p.KEYWORD_ONLY for p in params) or len(positional) > 2
    return len(positional) >= 2 or varargs, options


def available_models() -> dict[str, str]:
    """``{name: title}`` of every registered network.

    Examples
    --------
    >>> "unet2d" in available_models()
    True
    """
    _load_builtins()
    return {k: v.title for k, v in sorted(_REGISTRY.items())}
