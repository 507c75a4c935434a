"""Readers and writers: volumes (MRC, HDF5, TIFF, EM, Zarr/OME-Zarr), object lists, meshes.

Names are imported on first use, so ``import tomochunk.io`` stays cheap. Functions named like
their module (``label``, ``cluster``, ``pick``, ``convert``, ...) are at the top level: ``tomochunk.label``.

Examples
--------
>>> import tomochunk.io as io
>>> "open_volume" in io.__all__ and callable(io.read_objects)
True
"""

from __future__ import annotations

from .._lazy import lazy_api

_API = {
    "export_meshes": "tomochunk.io.mesh",
    "is_complete": "tomochunk.io.omezarr",
    "open_volume": "tomochunk.io.volume",
    "read_multiscale": "tomochunk.io.omezarr",
    "read_objects": "tomochunk.io.objects",
    "volume_kind": "tomochunk.io.volume",
    "write_copick": "tomochunk.io.objects",
    "write_objects": "tomochunk.io.objects",
    "write_volume": "tomochunk.io.volume",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy_api("tomochunk.io", _API)
