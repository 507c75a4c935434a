"""Array operations on dask/xarray: normalise, targets, label, cluster, pick, heatmaps, evaluate.

Names are imported on first use, so ``import tomochunk.ops`` stays cheap. Functions named like
their module (``label``, ``cluster``, ``pick``, ``convert``, ...) are at the top level: ``tomochunk.label``.

Examples
--------
>>> import tomochunk.ops as ops
>>> "regionprops" in ops.__all__ and callable(ops.regionprops)
True
"""

from __future__ import annotations

from .._lazy import lazy_api

_API = {
    "compete": "tomochunk.ops.interactions",
    "decode_heatmap": "tomochunk.ops.heatmap",
    "filter_objects": "tomochunk.ops.objects",
    "finite_stats": "tomochunk.ops.normalize",
    "heatmap_targets": "tomochunk.ops.heatmap",
    "interact": "tomochunk.ops.interactions",
    "merge_objects": "tomochunk.ops.objects",
    "nms_objects": "tomochunk.ops.objects",
    "plot_threshold_curve": "tomochunk.ops.evaluate",
    "regionprops": "tomochunk.ops.label",
    "remove_classes": "tomochunk.ops.objects",
    "scale_coordinates": "tomochunk.ops.objects",
    "select_classes": "tomochunk.ops.objects",
    "shapes": "tomochunk.ops.targets",
    "spheres": "tomochunk.ops.targets",
    "split_by_tomogram": "tomochunk.ops.objects",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy_api("tomochunk.ops", _API)
