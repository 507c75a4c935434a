"""Streaming conversion of any readable volume or movie to an OME-Zarr multiscale store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tqdm.auto import tqdm

from .._log import get_logger
from .._names import tomo_name
from ..errors import ValueProblem
from ._identity import check_alias, source_identity
from ._ngff_meta import VERSIONS, default_compressor
from ._source import warn
from .omezarr import PyramidWriter
from .volume import check_tomogram, open_source

log = get_logger(__name__)


def output_name(src) -> str:
    """``tomo.mrc`` -> ``tomo.zarr``, ``t1.ome.zarr`` -> ``t1.zarr``; a frame folder ``cell1/`` -> ``cell1.zarr``.

    The name is :func:`tomochunk._names.tomo_name`, the one rule; many inputs are named by
    :func:`tomochunk.workflows.batch.output_paths`, which keeps them distinct.

    Examples
    --------
    >>> output_name("data/t1.ome.zarr"), output_name("a/tomo.rec")
    ('t1.zarr', 'tomo.zarr')
    """
    return tomo_name(src) + ".zarr"


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


def mrc_origin(header, voxel_size):
    """Å position ``[z, y, x]`` of voxel 0 from an MRC header (as a dict): the ``origin`` field, or
    ``n[xyz]start`` voxels where the origin is zero (MRC2014, as UCSF ChimeraX reads it); None if both are 0.

    Examples
    --------
    >>> mrc_origin({"origin": {"x": 1000.0, "y": 2000.0, "z": 3000.0}}, 10.0)
    [3000.0, 2000.0, 1000.0]
    >>> mrc_origin({"origin": {"x": 0, "y": 0, "z": 0}, "nxstart": 5, "nystart": 6, "nzstart": 7}, 10.0)
    [70.0, 60.0, 50.0]
    """
    o = header.get("origin") or {}
    zyx = [float(o.get(a, 0.0)) for a in "zyx"]
    if not any(zyx):
        zyx = [float(header.get(f"n{a}start", 0) or 0) * float(voxel_size) for a in "zyx"]
    return zyx if any(zyx) else None


def _origin(meta):
    """The source's origin (Å, z, y, x): from the reader's ``attrs["origin"]``, else from an MRC header."""
    attrs = meta.get("attrs", {})
    if attrs.get("origin") is not None:
        return [float(v) for v in attrs["origin"]]
    header = meta.get("header") or attrs.get("mrc_header")
    return mrc_origin(header, meta.get("voxel_size") or 1.0) if header else None


def _codec(source, compression, ngff, dst, overwrite):
    """``False`` (raw chunks) or ``None`` (the default codec); decided once, kept on resume."""
    if compression is False:
        return False
    resumed = Path(dst).exists() and not overwrite  # a resumed store keeps its codec
    if compression == "auto" and ngff == "0.4" and not (resumed or _compressible(source)):
        return False
    return None


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
        Redo a complete store, or start afresh over an incomplete one written from another
        source or with other parameters. Without it, an interrupted conversion of the same
        source (same path, size, mtime and sampled checksum) and parameters is resumed, a
        complete one is returned as it is, and any other existing store is refused.
        An output that is, holds or lies inside the input is always refused.
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
        Level-0 statistics: mean, std, min, max and the count of non-finite voxels
        (those recorded in the store, when it was already complete).

    Examples
    --------
    >>> convert("tomo.mrc", "tomo.zarr")  # doctest: +SKIP
    {'mean': 0.01, 'std': 1.0, 'min': -4.9, 'max': 5.1, 'nonfinite': 0}
    """
    ngff = str(ngff)
    if ngff not in VERSIONS:
        raise ValueProblem(f"ngff must be one of {VERSIONS}, got {ngff!r}")
    if compression not in ("auto", True, False):
        raise ValueProblem(f"compression must be 'auto', True or False, got {compression!r}")
    check_alias(dst, [src])  # before anything is opened, let alone deleted
    source, meta = open_source(src, dataset=dataset)
    check_tomogram(meta, src, force)
    attrs = {"source": str(src)}
    if "header" in meta:
        attrs["mrc_header"] = meta["header"]
    for k in ("frames", "dataset"):
        if k in meta:
            attrs[k] = meta[k]
    attrs.update({k: v for k, v in meta.get("attrs", {}).items() if k in ("mrc_header", "source")})
    origin = _origin(meta)
    identity = source_identity(src)
    params = {"ngff": ngff, "compression": compression, "dataset": dataset, "voxel_size": meta["voxel_size"],
              "origin": origin}
    writer = PyramidWriter(dst, source.shape, source.dtype, dims=meta["dims"], voxel_size=meta["voxel_size"],
                           levels=levels, chunks=chunks, overwrite=overwrite, ngff=ngff, threads=threads,
                           label=False, attrs=attrs, name=tomo_name(dst), source=identity,
                           compressor=_codec(source, compression, ngff, dst, overwrite), params=params,
                           inputs=[src], origin=origin)
    if writer.complete:
        log.info("%s is complete and was converted from this source: nothing to do", dst)
        return writer.write(None)
    if type(source).__module__.startswith("dask"):  # a Zarr input: dask-backed
        def reader(region):
            return np.asarray(source[region].compute(scheduler="synchronous"))
    else:
        reader = source.__getitem__
    bar = None
    if progress:
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
