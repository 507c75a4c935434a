"""Networks: the DeepFinder U-Net (train, segment), slice-wise models, the model registry and archives.

Names are imported lazily (a module ``__getattr__``), so ``import tomochunk.nn`` loads
neither Keras nor a backend; a name's module is imported when the name is first used.

Examples
--------
>>> import tomochunk.nn as nn
>>> "segment" in nn.__all__ and "keras" not in dir(nn)
True
"""

from __future__ import annotations

from .._lazy import lazy_api

_API = {
    "deepfinder_unet": "tomochunk.nn.models",
    "load_model": "tomochunk.nn.models",
    "save_model": "tomochunk.nn.models",
    "check_patch_shape": "tomochunk.nn.models",
    "train": "tomochunk.nn.train",
    "PatchSampler": "tomochunk.nn.train",
    "class_scores": "tomochunk.nn.train",
    "segment": "tomochunk.nn.segment",
    "labelmap": "tomochunk.nn.segment",
    "write_segmentation": "tomochunk.nn.segment",
    "window_voxels": "tomochunk.nn.segment",
    "get_model": "tomochunk.nn.segment",
    "preload_model": "tomochunk.nn.segment",
    "create_model": "tomochunk.nn.registry",
    "available_models": "tomochunk.nn.registry",
    "register": "tomochunk.nn.registry",
    "register_file": "tomochunk.nn.registry",
    "register_module": "tomochunk.nn.registry",
    "new_model": "tomochunk.nn.archive",
    "save_archive": "tomochunk.nn.archive",
    "load_archive": "tomochunk.nn.archive",
    "read_archive_info": "tomochunk.nn.archive",
    "FeatureModel": "tomochunk.nn.archive",
    "ModelInfo": "tomochunk.nn.archive",
    "segment_slices": "tomochunk.nn.slices",
    "train_slices": "tomochunk.nn.slices",
    "predict_block": "tomochunk.nn.slices",
    "cached_model": "tomochunk.nn.slices",
    "segment_features": "tomochunk.nn.features",
    "TverskyLoss": "tomochunk.nn.losses",
    "NNPULoss": "tomochunk.nn.pu",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy_api("tomochunk.nn", _API)
