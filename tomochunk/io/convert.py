"""Streaming conversion of any readable volume or movie to an OME-Zarr multiscale store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._log import get_logger
from ._source import warn
from ..errors import ValueProblem
from .omezarr import PyramidWriter, default_compressor
from .volume import check_tomogram, open_source

log = get_logger(__name__)


def output_name(src) -> str:
    """``tomo.mrc`` -> ``tomo.zarr``; a frame folder ``cell1/`` -> ``cell1.zarr``."""
    p = Path(src)
    return (p.name if p.is_dir() and p.suffix.lower() != ".zarr" else p.stem) + ".zarr"


#: compression ratio below which ``convert(compression="auto")`` stores float data raw
INCOMPRESSIBLE = 1.15


def _compressible(source, sample=(32, 256, 256)) -> bool:
    """Whether a central sample of a float volume compresses by at least ``INCOMPRESSIBLE``."""
    if np.dtype(source.dtype).kind != "f":
        return True
    region = []
    for n, want in zip(source.shape, (1,) * (len(source.shape) - 3) + sample):
        w = min(n, want)
        region.append(slice((n - w) // 2, (n - w) // 2 + w, 1))
    block = np.ascontiguousarray(source[tuple(region)])
    ratio = block.nbytes / max(len(default_compressor(block.dtype).encode(block)), 1)
    log.info("central sample compresses %.2fx: storing %s", ratio,
             "compressed" if ratio >= INCOMPRESSIBLE else "raw")
    return ratio >= INCOMPRESSIBLE


def convert(src, dst, *, chunks=None, levels=3, overwrite=False, dataset=None, ngff="0.4",
            compression="auto", threads=None, progress=False, force=False):
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
    compression : {"auto", True, False}
        ``"auto"`` compresses integer data (zstd) and float data (lz4) unless a
        sample from the volume's centre compresses less than
        ``INCOMPRESSIBLE`` (1.15×): noisy float tomograms gain ~7% of disk
        with any lossless codec, for about half the conversion speed, so
        they are stored raw. ``True`` always compresses, ``False`` never.
    threads : int, optional
        Chunks in flight (default: cores + 2, as raw chunks are written with ``O_DIRECT``
        and their threads wait on the disk; each holds one chunk, 64 MB at 256³ float32).
    force : bool
        Convert a source whose metadata marks it as a label map (``*_labels.mrc``) with a
        warning, instead of refusing it (a tomogram store with label values would be segmented).

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
    check_tomogram(meta, src, force)
    attrs = {"source": str(src)}
    if "header" in meta:
        attrs["mrc_header"] = meta["header"]
    for k in ("frames", "dataset"):
        if k in meta:
            attrs[k] = meta[k]
    attrs.update({k: v for k, v in meta.get("attrs", {}).items() if k in ("mrc_header", "source")})
    if compression not in ("auto", True, False):
        raise ValueProblem(f"compression must be 'auto', True or False, got {compression!r}")
    compressor = None
    if compression is False or (compression == "auto" and ngff == "0.4" and not _compressible(source)):
        compressor = False
    writer = PyramidWriter(dst, source.shape, source.dtype, dims=meta["dims"], voxel_size=meta["voxel_size"],
                           levels=levels, chunks=chunks, overwrite=overwrite, ngff=ngff, threads=threads,
                           label=False, attrs=attrs, name=Path(dst).stem, compressor=compressor)
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
