"""Streaming conversion of any readable volume or movie to an OME-Zarr multiscale store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._log import get_logger
from ._source import warn
from .omezarr import PyramidWriter
from .volume import open_source

log = get_logger(__name__)


def output_name(src) -> str:
    """``tomo.mrc`` -> ``tomo.zarr``; a frame folder ``cell1/`` -> ``cell1.zarr``."""
    p = Path(src)
    return (p.name if p.is_dir() and p.suffix.lower() != ".zarr" else p.stem) + ".zarr"


def convert(src, dst, *, chunks=None, levels=3, overwrite=False, dataset=None, ngff="0.4",
            threads=None, progress=False):
    """Convert a tomogram or movie to an OME-Zarr multiscale store, streaming block by block.

    Memory stays at a few storage chunks whatever the input size. Each finished
    chunk is recorded, so rerunning an interrupted conversion resumes it; the
    completion marker is written last.

    Parameters
    ----------
    src : str or Path
        Anything :func:`tomochunk.open_volume` reads.
    dst : str or Path
        Output ``.zarr`` store.
    chunks : int or tuple, optional
        Storage chunks (default 256³, or 64×512×512 for movies).
    levels : int
        Multiscale levels: 1×, 2×, 4×, ... (movies are not downsampled in time).
    overwrite : bool
        Replace a complete existing store. An incomplete one is resumed either way.
    ngff : {"0.4", "0.5"}
        NGFF 0.4 on Zarr 2 (default) or 0.5 on Zarr 3.

    Returns
    -------
    dict
        Level-0 statistics: mean, std, min, max and the count of non-finite voxels.

    Examples
    --------
    >>> convert("tomo.mrc", "tomo.zarr")  # doctest: +SKIP
    {'mean': 0.01, 'std': 1.0, 'min': -4.9, 'max': 5.1, 'nonfinite': 0}
    """
    source, meta = open_source(src, dataset=dataset)
    attrs = {"source": str(src)}
    if "header" in meta:
        attrs["mrc_header"] = meta["header"]
    for k in ("frames", "dataset"):
        if k in meta:
            attrs[k] = meta[k]
    attrs.update({k: v for k, v in meta.get("attrs", {}).items() if k in ("mrc_header", "source")})
    writer = PyramidWriter(dst, source.shape, source.dtype, dims=meta["dims"], voxel_size=meta["voxel_size"],
                           levels=levels, chunks=chunks, overwrite=overwrite, ngff=ngff, threads=threads,
                           label=False, attrs=attrs, name=Path(dst).stem)
    if type(source).__module__.startswith("dask"):  # a Zarr input: dask-backed
        def reader(region):
            return np.asarray(source[region].compute(scheduler="synchronous"))
    else:
        reader = source.__getitem__
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=writer.n_chunks0(), desc=Path(src).name, unit="chunk")
        writer.progress = bar.update
    try:
        stats = writer.write(reader)
    finally:
        if bar is not None:
            bar.close()
    if stats["nonfinite"]:
        warn(f"{stats['nonfinite']} NaN/Inf voxels", src)
    writer.finish(stats=stats)
    log.info("converted %s -> %s", src, dst)
    return stats
