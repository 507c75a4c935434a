"""Which Keras backend ``tomochunk train`` runs on (``--backend auto``).

Keras picks its backend once per process, from ``KERAS_BACKEND``, when it is first imported,
so the choice is made here before that, by the command line. The network and its losses are
``keras.ops`` only, so a model trained on one backend is segmented on another (the ``.keras``
file is backend-neutral).

On a CPU without bfloat16 (AMD Zen 3), training is bound by the gradients of the 3D
convolutions, which PyTorch's oneDNN path computes much faster than TensorFlow's: one
optimiser step of the czii recipe (batch 4, 24^3 patches, filters 16-24-32, float32) took
0.30 s under torch, 1.23 s under TensorFlow and 1.61 s under JAX; in 7-minute training pilots
of ``benchmarks/bench_accuracy_pilot.py`` torch ran 926 steps to a CZII F-beta of 0.368
where TensorFlow ran 333 to 0.212. Where bfloat16 is native (a GPU, AMX or AVX512-BF16), the
TensorFlow backend was the one measured, so ``auto`` keeps it there.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from .._log import get_logger
from ..errors import ValueProblem
from ._predict import cpu_has_bf16

log = get_logger(__name__)

#: the values of ``--backend`` besides ``"auto"``
BACKENDS = ("tensorflow", "torch", "jax")
#: the choices of ``--backend``
CHOICES = ("auto", *BACKENDS)


def running_backend() -> str | None:
    """The backend Keras runs in this process, ``None`` before Keras is imported (then still free)."""
    return sys.modules["keras"].config.backend() if "keras" in sys.modules else None


def nvidia_gpu() -> bool:
    """Whether this machine shows an NVIDIA GPU, looked up without importing a framework.

    Examples
    --------
    >>> isinstance(nvidia_gpu(), bool)
    True
    """
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def choose_backend(choice="auto", precision="auto", *, cpuinfo="/proc/cpuinfo", gpu=None,
                   installed=None, running="current", env=None) -> str:
    """The Keras backend of a training: ``choice`` itself, or for ``"auto"`` the one Keras already
    runs in this process, else an explicit ``KERAS_BACKEND``, else torch where it is installed and
    the training runs float32 on a CPU, else tensorflow.

    Parameters
    ----------
    choice : {"auto", "tensorflow", "torch", "jax"}
    precision : {"auto", "float32", "bfloat16"}
        The training's precision: ``"auto"`` is float32 on a CPU without native bfloat16.
    cpuinfo, gpu, installed, running, env
        For tests: the CPU flags file, whether a GPU is present, the installed backends, the
        backend Keras already runs (``None``: Keras not imported) and the environment (default:
        each looked up).

    Examples
    --------
    >>> choose_backend("jax")
    'jax'
    >>> choose_backend("auto", "auto", cpuinfo="/no/such/file", gpu=False, installed={"torch"},
    ...                running=None, env={})
    'torch'
    >>> choose_backend("auto", "bfloat16", gpu=False, installed={"torch"}, running=None, env={})
    'tensorflow'
    >>> choose_backend("auto", gpu=False, installed={"torch"}, running="tensorflow")   # cannot change now
    'tensorflow'
    """
    if choice not in CHOICES:
        raise ValueProblem(f"backend must be auto or one of {', '.join(BACKENDS)}, not {choice!r}")
    if choice != "auto":
        return choice
    if running == "current":
        running = running_backend()
    if running:   # Keras is imported already (a caller's process): its backend cannot change now
        return running
    env = os.environ if env is None else env
    if env.get("KERAS_BACKEND"):
        return env["KERAS_BACKEND"]
    if installed is None:
        installed = {b for b in BACKENDS if importlib.util.find_spec(b) is not None}
    gpu = nvidia_gpu() if gpu is None else gpu
    float32_cpu = not gpu and (precision == "float32" or (precision == "auto" and not cpu_has_bf16(cpuinfo)))
    return "torch" if float32_cpu and "torch" in installed else "tensorflow"


def use_backend(name: str) -> str:
    """Make ``name`` the Keras backend of this process; before Keras is imported only.

    Returns the backend in use. Raises ``ValueProblem`` when Keras already runs another one, or
    when ``name`` is not installed.

    Examples
    --------
    >>> import keras
    >>> use_backend(keras.config.backend()) == keras.config.backend()
    True
    """
    running = running_backend()
    if running is not None:
        if running != name:
            raise ValueProblem(f"Keras already runs on {running} in this process; "
                               f"set KERAS_BACKEND={name} before it is imported")
        return name
    if importlib.util.find_spec(name) is None:
        raise ValueProblem(f"the {name} backend is not installed (pip install 'tomochunk[torch]' for torch)")
    os.environ["KERAS_BACKEND"] = name
    log.info("Keras backend: %s", name)
    return name
