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


#: most bytes one full-resolution slab of a split window may take (:mod:`tomochunk.nn._split`);
#: unbounded: a slab takes what the window leaves of the budget. 0: no slabs, whole calls
SLAB_BYTES = float("inf")


def block_memory(model, precision="float32"):
    """``(planned, held, per slab voxel)``: bytes per window voxel of one ``tiling="blocks"`` call
    for the block plan, of them those held for the whole call, and bytes per slab voxel.

    A DeepFinder U-Net runs its full-resolution levels in z slabs (:mod:`tomochunk.nn._split`).
    For the whole call it holds the input, the skip and the cropped output (``held``: 1.25 x
    first-level filters x itemsize, plus 16 bytes and 6 per class, the float32 core and the
    writer's float16 copy). Its pooled levels then take about as much again, and its slabs
    reuse that memory: the plan counts twice the skip (``planned``), and a slab takes what the
    largest window leaves of the budget (:func:`slab_voxels`), at :func:`bytes_per_voxel`.
    Any other network runs whole: ``(block_bytes_per_voxel, 0, 0)``.

    Examples
    --------
    >>> from types import SimpleNamespace as N
    >>> from tomochunk.nn import _split
    >>> names = (_split.SKIP, _split.POOLED, _split.DEEP, _split.UP, _split.CAT) + _split.MIDDLE + _split.TAIL
    >>> unet = N(layers=[N(name="conv3d", filters=32)] + [N(name=n) for n in names],
    ...          output_shape=(None, None, None, None, 13))
    >>> block_memory(unet), block_memory(unet, "bfloat16")
    ((414.0, 254.0, 1024.0), (254.0, 174.0, 544.0))
    >>> block_memory(N(layers=[], output_shape=(None, 13)))
    (1440.0, 0, 0)
    """
    from ._split import splittable

    if not (SLAB_BYTES > 0 and splittable(model)):
        return block_bytes_per_voxel(model, precision), 0, 0
    f0 = next((int(layer.filters) for layer in model.layers if getattr(layer, "filters", None)), 32)
    classes = int((getattr(model, "output_shape", None) or (0,))[-1] or 0)
    skip = 1.25 * f0 * (2 if precision == "bfloat16" else 4)
    held = skip + 16 + 6.0 * classes
    return skip + held, held, bytes_per_voxel(model, precision)


def slab_voxels(largest, held, per_slab, workers) -> int:
    """Voxels of one slab: what a window of ``largest`` voxels leaves of the memory budget
    beyond its ``held`` bytes per voxel (at ``per_slab`` bytes each), at most ``SLAB_BYTES``.
    A 200x256x256 13-class window (float32, 12 GB worker) gets 3.0 Mvoxels: 46 planes.

    Examples
    --------
    >>> slab_voxels(200 * 256 * 256, 254.0, 1024.0, {"w": {"memory_limit": 12e9}})
    2998800
    >>> slab_voxels(100, 0, 0, {})
    0
    """
    if per_slab <= 0:
        return 0
    free = min(SLAB_BYTES, memory_budget(workers) - largest * held)
    return max(1, int(free // per_slab))


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
