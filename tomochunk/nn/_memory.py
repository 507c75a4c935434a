"""How much of a worker's memory one network call may take, and what a model needs per voxel.

Both tilings of :func:`tomochunk.nn.segment.segment` size their work from these: the
``"blocks"`` tiling its block sides, the ``"patches"`` tiling its batch of patches.
"""

from __future__ import annotations

import os

import psutil

#: fraction of a worker's memory limit one network call may take
MEMORY_FRACTION = 0.6
#: TensorFlow and the libraries in a worker (0.7 GB measured), outside the budget
FRAMEWORK_BYTES = 0.8e9


def bytes_per_voxel(model, precision="float32") -> float:
    """Peak memory of one network call per input voxel, over-estimated from the first-level filters.

    0.82 KB (float32) and 0.46 KB (bfloat16) were measured above the process base for
    DeepFinder's (32, 48, 64) filters, isotropic or anisotropic; this gives 1.02 and 0.54 KB
    (7.5 x first-level filters x itemsize, plus 64 bytes).

    Examples
    --------
    >>> class Conv:
    ...     filters = 32
    >>> class Net:
    ...     layers = [Conv()]
    >>> bytes_per_voxel(Net()), bytes_per_voxel(Net(), "bfloat16")
    (1024.0, 544.0)
    """
    f0 = next((int(layer.filters) for layer in model.layers if hasattr(layer, "filters")), 32)
    return 7.5 * f0 * (2 if precision == "bfloat16" else 4) + 64


def block_bytes_per_voxel(model, precision="float32") -> float:
    """Peak memory per window voxel of one ``tiling="blocks"`` call: :func:`bytes_per_voxel` plus
    32 bytes per class (the float32 softmax output, its numpy copy, the cropped core and the
    writer's copy). A 13-class U-Net on a 176x192x192 window (float32) reached 9.5 GiB, 1.44 KB
    per voxel with TensorFlow's base: without this term, it paused its 11.8 GiB worker at 80%.

    Examples
    --------
    >>> class Conv:
    ...     filters = 32
    >>> class Net:
    ...     layers = [Conv()]
    ...     output_shape = (None, None, None, None, 13)
    >>> block_bytes_per_voxel(Net())
    1440.0
    """
    classes = int((getattr(model, "output_shape", None) or (0,))[-1] or 0)
    return bytes_per_voxel(model, precision) + 32.0 * classes


def memory_budget(workers: dict) -> float:
    """Bytes one network call may take on the smallest worker.

    A fraction of the smallest worker memory limit (without a cluster: of the free RAM
    shared by this machine's cores), less what TensorFlow itself holds, and never below a
    tenth of the limit.

    Examples
    --------
    >>> memory_budget({"w1": {"memory_limit": 2e9}, "w2": {"memory_limit": 4e9}}) / 1e9
    0.4
    """
    limits = [int(wk.get("memory_limit") or 0) for wk in workers.values()]
    if limits and min(limits) > 0:
        total = min(limits)
    else:
        total = psutil.virtual_memory().available / max(1, len(workers) or os.cpu_count() or 1)
    return max(MEMORY_FRACTION * total - FRAMEWORK_BYTES, 0.1 * total)


def patch_batch(patch: int, bytes_per_voxel: float, workers: dict) -> int:
    """Patches per network call for ``tiling="patches"``: as many as fit the memory budget,
    at most 4 Mvoxels and 64 patches (beyond that a larger batch is no faster).

    Examples
    --------
    >>> patch_batch(48, 1024.0, {"w": {"memory_limit": 2e9}})
    3
    >>> patch_batch(48, 1024.0, {"w": {"memory_limit": 64e9}})
    37
    """
    cap = max(1, min(64, (1 << 22) // patch ** 3))
    fit = int(memory_budget(workers) // (bytes_per_voxel * patch ** 3))
    return int(max(1, min(cap, fit)))
