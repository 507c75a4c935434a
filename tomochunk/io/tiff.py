"""TIFF stacks and folders of TIFF frames (TIRF movies)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import FormatError, MissingError, ShapeError
from ._source import Source

TIFF_SUFFIXES = (".tif", ".tiff")
_NUMBER = re.compile(r"(\d+)")


def is_tiff(path) -> bool:
    return Path(path).suffix.lower() in TIFF_SUFFIXES


def frame_number(path) -> int | None:
    """The last number in a file name (``cell3_frame0012.tif`` -> 12), or None."""
    nums = _NUMBER.findall(Path(path).stem)
    return int(nums[-1]) if nums else None


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in _NUMBER.split(name)]


def list_frames(folder) -> list[Path]:
    """The TIFF frames of a folder in frame order, checked for gaps, duplicates and unnumbered files.

    Examples
    --------
    >>> list_frames("movie_frames/")  # doctest: +SKIP
    [PosixPath('movie_frames/f0.tif'), PosixPath('movie_frames/f1.tif'), ...]
    """
    folder = Path(folder)
    files = sorted((p for p in folder.iterdir() if p.is_file() and is_tiff(p)), key=lambda p: _natural_key(p.name))
    if not files:
        raise MissingError("no .tif/.tiff frames in the folder", folder)
    numbered = {}
    for p in files:
        n = frame_number(p)
        if n is None:
            raise FormatError("frame file name has no frame number", p)
        if n in numbered:
            raise FormatError(f"duplicate frame number {n} (also in {numbered[n].name})", p)
        numbered[n] = p
    nums = sorted(numbered)
    for a, b in zip(nums, nums[1:]):
        if b != a + 1:
            missing = a + 1 if b == a + 2 else f"{a + 1}-{b - 1}"
            raise FormatError(f"frame {missing} is missing before this frame", numbered[b])
    return [numbered[n] for n in nums]


def _page_layout(path):
    """(shape, dtype, n_pages) of a TIFF file, from its headers only."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            return tuple(series.shape), np.dtype(series.dtype)
    except Exception as exc:
        raise FormatError(f"not a readable TIFF file ({exc})", path) from None


class TiffFramesSource(Source):
    """A ``[t, y, x]`` movie, one 2D TIFF file per frame."""

    def __init__(self, files, frame_shape, dtype):
        self.files = [str(f) for f in files]
        self.shape = (len(self.files),) + tuple(frame_shape)
        self.dtype = np.dtype(dtype)

    def read(self, key):
        import tifffile

        t, rest = key[0], key[1:]
        frames = [tifffile.imread(self.files[i])[rest] for i in range(*t.indices(self.shape[0]))]
        return np.stack(frames).astype(self.dtype, copy=False) if frames else \
            np.empty((0,) + tuple(len(range(*s.indices(n))) for s, n in zip(rest, self.shape[1:])), self.dtype)


class TiffStackSource(Source):
    """A multi-page TIFF (or one 3D series) read page by page."""

    def __init__(self, path, shape, dtype):
        self.path, self.shape, self.dtype = str(path), tuple(shape), np.dtype(dtype)

    def read(self, key):
        import tifffile

        z, rest = key[0], key[1:]
        idx = list(range(*z.indices(self.shape[0])))
        with tifffile.TiffFile(self.path) as tf:
            pages = tf.series[0].pages if len(tf.series[0].pages) == self.shape[0] else None
            if pages is None:  # a single page holding a 3D image
                return tf.series[0].asarray()[key]
            return np.stack([pages[i].asarray()[rest] for i in idx]) if idx else \
                np.empty((0,) + tuple(len(range(*s.indices(n))) for s, n in zip(rest, self.shape[1:])), self.dtype)


def read_tiff_folder(folder):
    """Open a folder of TIFF frames as a lazy ``[t, y, x]`` movie; every frame's header is checked."""
    files = list_frames(folder)
    shape0, dtype0 = _page_layout(files[0])
    if len(shape0) != 2:
        raise ShapeError(f"frames must be 2D images, this one is {shape0}", files[0])
    for f in files[1:]:
        shape, dtype = _page_layout(f)
        if shape != shape0 or dtype != dtype0:
            raise ShapeError(f"frame is {shape} {dtype}, the first frame ({files[0].name}) is "
                             f"{shape0} {dtype0}", f)
    meta = {"voxel_size": 1.0, "dims": ("t", "y", "x"), "frames": [f.name for f in files]}
    return TiffFramesSource(files, shape0, dtype0), meta


def read_tiff_stack(path):
    """Open a 3D TIFF stack lazily, page by page."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise FormatError("empty file", path)
    shape, dtype = _page_layout(path)
    if len(shape) != 3:
        raise ShapeError(f"expected a 3D stack, got shape {shape}", path)
    return TiffStackSource(path, shape, dtype), {"voxel_size": 1.0, "dims": ("z", "y", "x")}


def write_tiff_frames(movie, folder, *, prefix="frame", digits=4) -> list[Path]:
    """Write a ``[t, y, x]`` array as one TIFF file per frame (``frame0000.tif``, ...)."""
    import tifffile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for t in range(movie.shape[0]):
        p = folder / f"{prefix}{t:0{digits}d}.tif"
        tifffile.imwrite(p, np.asarray(movie[t]))
        out.append(p)
    return out
