"""Multi-step jobs built on io, ops and nn: TIRF, picking from stores, the YAML pipeline, batches.

Layer 5 of the package: workflows may import everything below them (``io``, ``ops``,
``phantom``/``viz``, ``nn``) and nothing imports them but ``cli`` and the lazy forwards
kept at old import paths. Names are imported on first use, so ``import
tomochunk.workflows`` stays cheap and never loads TensorFlow.

Examples
--------
>>> import tomochunk.workflows as wf
>>> wf.output_names(["TS_01/tomo.mrc", "TS_02/tomo.mrc"])
{'TS_01/tomo.mrc': 'TS_01_tomo', 'TS_02/tomo.mrc': 'TS_02_tomo'}
"""

from __future__ import annotations

from .._lazy import lazy_api

_API = {
    "run": "tomochunk.workflows.pipeline",
    "load_config": "tomochunk.workflows.pipeline",
    "shipped_model": "tomochunk.workflows.pipeline",
    "shipped_model_info": "tomochunk.workflows.pipeline",
    "pick_inputs": "tomochunk.workflows.picking",
    "pick_volume": "tomochunk.workflows.picking",
    "output_names": "tomochunk.workflows.batch",
    "output_paths": "tomochunk.workflows.batch",
    "pick_many": "tomochunk.workflows.batch",
    "write_segmentation": "tomochunk.workflows.segment",
    "segment_features": "tomochunk.workflows.features",
}

__all__ = sorted(_API) + ['tirf']
__getattr__, __dir__ = lazy_api("tomochunk.workflows", _API, modules=('tirf',))
