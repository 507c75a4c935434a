"""Which arithmetic the network runs in: ``precision="auto"`` of :func:`tomochunk.nn.segment.segment`
and :func:`tomochunk.nn.train.train`.

bfloat16 convolutions are 3-5x faster than float32 where the hardware has bfloat16 matrix
units (Intel AMX, AVX512-BF16, GPUs) and slower where it emulates them, so ``"auto"``
picks bfloat16 only where it pays. Emulated, it costs far more than it saves: on an AMD EPYC
without AVX-512 (Zen 3), mixed-bfloat16 training of the czii recipe made 28 optimiser steps in
21 min where DeepFinder's float32 made 262 in 20.
"""

from __future__ import annotations

from pathlib import Path

from .._log import get_logger

log = get_logger(__name__)

#: the network arithmetics of ``segment`` and ``train`` (besides ``"auto"``, resolved by :func:`resolve_precision`)
PRECISIONS = ("float32", "bfloat16")
#: /proc/cpuinfo flags of CPUs with native bfloat16 dot products
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_bf16(cpuinfo="/proc/cpuinfo") -> bool:
    """Whether this machine's CPU lists AMX-BF16 or AVX512-BF16 (False where it cannot tell).

    Examples
    --------
    >>> cpu_has_bf16("/no/such/file")
    False
    """
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return any(f in flags for f in BF16_FLAGS)
    return False


def resolve_precision(precision, gpu=False, cpuinfo="/proc/cpuinfo") -> str:
    """``"float32"`` or ``"bfloat16"``; ``"auto"`` is bfloat16 on GPU workers and on CPUs with
    AMX-BF16/AVX512-BF16 (this process's CPU stands for the workers'), float32 elsewhere.

    Examples
    --------
    >>> resolve_precision("float32"), resolve_precision("auto", gpu=True)
    ('float32', 'bfloat16')
    >>> resolve_precision("auto", cpuinfo="/no/such/file")
    'float32'
    """
    if precision != "auto":
        return precision
    chosen = "bfloat16" if gpu or cpu_has_bf16(cpuinfo) else "float32"
    log.info("precision='auto' -> %s (%s)", chosen,
             "GPU workers" if gpu else "CPU flags " + ("have" if chosen == "bfloat16" else "lack") + " bfloat16")
    return chosen


def local_gpu() -> bool:
    """Whether Keras's backend sees a GPU in this process (training runs here, not on workers).

    Examples
    --------
    >>> isinstance(local_gpu(), bool)
    True
    """
    import keras

    try:
        if keras.config.backend() == "torch":   # Keras has no device list for torch
            import torch

            return bool(torch.cuda.is_available())
        return bool(keras.distribution.list_devices("gpu"))
    except Exception:   # a backend that cannot list its devices has none to offer
        return False
