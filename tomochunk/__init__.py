"""tomochunk: out-of-core cryo-ET and TIRF segmentation and particle picking.

Arrays are indexed ``[z, y, x]`` (``[t, y, x]`` for movies, ``[c, z, y, x]``
for score maps); object lists carry ``x, y, z`` in voxels plus
``attrs["voxel_size"]`` in Å. See the README for the full conventions.

The public functions are imported lazily so that ``import tomochunk`` stays
cheap and TensorFlow is only loaded by what needs it.

Examples
--------
>>> import tomochunk
>>> "FormatError" in dir(tomochunk) and callable(tomochunk.read_objects) and tomochunk.workflows.__name__
'tomochunk.workflows'
"""

from __future__ import annotations

from ._lazy import lazy_api
from .errors import (ExistsError, FormatError, IncompleteError, MissingError,
                     ShapeError, TomochunkError, ValueProblem)

__version__ = "0.1.0"

_API = {
    # io
    "open_volume": "tomochunk.io.volume",
    "write_volume": "tomochunk.io.volume",
    "convert": "tomochunk.io.convert",
    "read_objects": "tomochunk.io.objects",
    "write_objects": "tomochunk.io.objects",
    "write_copick": "tomochunk.io.objects",
    # data generation
    "phantom_tomogram": "tomochunk.phantom",
    "phantom_movie": "tomochunk.phantom",
    # object-list operations and evaluation
    "select_classes": "tomochunk.ops.objects",
    "remove_classes": "tomochunk.ops.objects",
    "scale_coordinates": "tomochunk.ops.objects",
    "filter_objects": "tomochunk.ops.objects",
    "merge_objects": "tomochunk.ops.objects",
    "split_by_tomogram": "tomochunk.ops.objects",
    "nms_objects": "tomochunk.ops.objects",
    "evaluate": "tomochunk.ops.evaluate",
    "plot_threshold_curve": "tomochunk.ops.evaluate",
    # maps to objects
    "label": "tomochunk.ops.label",
    "regionprops": "tomochunk.ops.label",
    "cluster": "tomochunk.ops.cluster",
    "pick": "tomochunk.ops.pick",
    "compete": "tomochunk.ops.interactions",
    "interact": "tomochunk.ops.interactions",
    # network
    "deepfinder_unet": "tomochunk.nn.models",
    "load_model": "tomochunk.nn.models",
    "save_model": "tomochunk.nn.models",
    "train": "tomochunk.nn.train",
    "segment": "tomochunk.nn.segment",
    "labelmap": "tomochunk.nn.segment",
    "write_segmentation": "tomochunk.workflows.segment",
    "run": "tomochunk.workflows.pipeline",
    "pick_inputs": "tomochunk.workflows.picking",
    "orthoslices": "tomochunk.viz",
    # model library, meshes, sparse labels
    "create_model": "tomochunk.nn.registry",
    "available_models": "tomochunk.nn.registry",
    "save_archive": "tomochunk.nn.archive",
    "load_archive": "tomochunk.nn.archive",
    "segment_slices": "tomochunk.nn.slices",
    "train_slices": "tomochunk.nn.slices",
    "new_model": "tomochunk.nn.archive",
    "segment_features": "tomochunk.workflows.features",
    "export_meshes": "tomochunk.io.mesh",
    "heatmap_targets": "tomochunk.ops.heatmap",
    "decode_heatmap": "tomochunk.ops.heatmap",
    # misc
    "get_client": "tomochunk.parallel",
    "normalize": "tomochunk.ops.normalize",
}

__all__ = sorted(_API) + ["TomochunkError", "FormatError", "ShapeError", "MissingError",
                          "ExistsError", "IncompleteError", "ValueProblem", "targets", "workflows"]


__getattr__, _dir = lazy_api("tomochunk", _API, modules=("targets", "workflows"))


def __dir__():
    return __all__  # the error classes too, which lazy_api's table does not list
