"""TIFF stacks and folders of TIFF frames (TIRF movies)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import FormatError, MissingError, ShapeError
from ._source import Source, warn

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
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> for name in ("f10.tif", "f9.tif", "f11.tif"):
    ...     _ = (d / name).write_bytes(b"")
    >>> [p.name for p in list_frames(d)]
    ['f9.tif', 'f10.tif', 'f11.tif']
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


def _series_layout(path):
    """``[(shape, dtype, axes, n_pages), ...]`` for every series of a TIFF file, from its headers only.

    Pictures with several samples per pixel (RGB, RGBA, planar channels) are refused:
    their last (or first) axis is colour, not space.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            out = [(tuple(s.shape), np.dtype(s.dtype), s.axes, len(s.pages)) for s in tf.series]
            spp = max((int(getattr(p, "samplesperpixel", 1)) for p in tf.pages[:1]), default=1)
    except Exception as exc:
        raise FormatError(f"not a readable TIFF file ({exc})", path) from None
    if not out:
        raise FormatError("TIFF file holds no image", path)
    for shape, _, axes, _ in out:
        if "S" in axes or spp > 1:
            n = shape[axes.index("S")] if "S" in axes else spp
            raise ShapeError(f"image has {n} samples per pixel (RGB or colour channels, axes {axes}, "
                             f"shape {shape}); tomochunk reads single-channel (grey) images only", path)
        if "C" in axes and shape[axes.index("C")] > 1:
            raise ShapeError(f"image has {shape[axes.index('C')]} channels (axes {axes}); tomochunk reads "
                             "single-channel images only", path)
    return out


def _page_layout(path):
    """(shape, dtype) of a single-series TIFF file (one frame of a movie folder)."""
    layout = _series_layout(path)
    if len(layout) > 1:
        raise FormatError(f"frame file holds {len(layout)} series; expected one image", path)
    shape, dtype, _, _ = layout[0]
    return tuple(s for s in shape if s != 1) if len(shape) > 2 else shape, dtype


def _decode_error(path, what, exc):
    return FormatError(f"cannot decode {what} ({type(exc).__name__}: {exc}); the file is damaged", path)


def _empty(rest, shape, dtype):
    return np.empty((0,) + tuple(len(range(*s.indices(n))) for s, n in zip(rest, shape)), dtype)


class TiffFramesSource(Source):
    """A ``[t, y, x]`` movie, one 2D TIFF file per frame."""

    def __init__(self, files, frame_shape, dtype):
        self.files = [str(f) for f in files]
        self.shape = (len(self.files),) + tuple(frame_shape)
        self.dtype = np.dtype(dtype)

    def read(self, key):
        import tifffile

        t, rest = key[0], key[1:]
        frames = []
        for i in range(*t.indices(self.shape[0])):
            try:
                img = tifffile.imread(self.files[i])
            except Exception as exc:  # codec errors (zlib, LZW, ...) and truncated strips
                raise _decode_error(self.files[i], "the frame", exc) from None
            frames.append(img.reshape(self.shape[1:])[rest])
        return np.stack(frames).astype(self.dtype, copy=False) if frames else _empty(rest, self.shape[1:],
                                                                                     self.dtype)


class TiffStackSource(Source):
    """A multi-page TIFF read page by page; several series of equal pages are read as one stack.

    ``counts`` holds the pages of each series, in file order. A single series whose one
    page holds the whole 3D image (``counts == (1,)`` with more than one slice) is read whole.
    """

    def __init__(self, path, shape, dtype, counts=None):
        self.path, self.shape, self.dtype = str(path), tuple(shape), np.dtype(dtype)
        self.counts = tuple(counts or (self.shape[0],))

    def read(self, key):
        import tifffile

        z, rest = key[0], key[1:]
        idx = list(range(*z.indices(self.shape[0])))
        starts = np.concatenate([[0], np.cumsum(self.counts)])  # page numbers, not chunk offsets
        with tifffile.TiffFile(self.path) as tf:
            try:
                if len(self.counts) == 1 and self.counts[0] != self.shape[0]:  # one page holding a 3D image
                    return tf.series[0].asarray().reshape(self.shape)[key]
                if not idx:
                    return _empty(rest, self.shape[1:], self.dtype)
                planes = []
                for i in idx:
                    si = int(np.searchsorted(starts, i, side="right") - 1)
                    page = tf.series[si].pages[i - int(starts[si])]
                    planes.append(page.asarray().reshape(self.shape[1:])[rest])
            except Exception as exc:  # codec errors (zlib, LZW, ...) and truncated strips
                raise _decode_error(self.path, f"page {i if idx else 0}", exc) from None
            return np.stack(planes).astype(self.dtype, copy=False)


def read_tiff_folder(folder):
    """Open a folder of TIFF frames as a lazy ``[t, y, x]`` movie; every frame's header is checked.

    Examples
    --------
    >>> import tifffile, tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> for t in range(3):
    ...     tifffile.imwrite(d / f"f{t}.tif", np.zeros((4, 5), np.uint16))
    >>> src, meta = read_tiff_folder(d)
    >>> src.shape, meta["dims"]
    ((3, 4, 5), ('t', 'y', 'x'))
    """
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
    """Open a 3D TIFF stack lazily, page by page.

    A file of several series (tifffile writes one per ``imwrite(..., append=True)``) is
    read as one stack when every series is a pile of pages of the same size and dtype,
    with a warning that says how the slices were gathered; other mixtures are refused.
    Colour (RGB, several samples per pixel) is refused.

    Examples
    --------
    >>> import tifffile, tempfile
    >>> p = Path(tempfile.mkdtemp()) / "s.tif"
    >>> tifffile.imwrite(p, np.zeros((6, 4, 5), np.uint16), photometric="minisblack")
    >>> read_tiff_stack(p)[0].shape
    (6, 4, 5)
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise FormatError("empty file", path)
    layout = _series_layout(path)
    if len(layout) == 1:
        shape, dtype, _, n = layout[0]
        shape = tuple(s for s in shape if s != 1) if len(shape) > 3 else shape
        if len(shape) != 3:
            raise ShapeError(f"expected a 3D stack, got shape {shape}", path)
        return TiffStackSource(path, shape, dtype, (n,)), {"voxel_size": 1.0, "dims": ("z", "y", "x")}
    planes = set()
    for shape, dtype, _, n in layout:
        plane = shape[-2:] if len(shape) >= 2 and int(np.prod(shape[:-2], dtype=np.int64)) == n else None
        planes.add((plane, dtype))
    if len(planes) != 1 or None in {p for p, _ in planes}:
        desc = " + ".join(f"{s} {d}" for s, d, _, _ in layout)
        raise FormatError(f"TIFF holds {len(layout)} series of different shapes ({desc}); "
                          "tomochunk reads one volume per file", path)
    (plane, dtype), = planes
    counts = tuple(n for _, _, _, n in layout)
    warn(f"TIFF holds {len(layout)} series ({' + '.join(map(str, counts))} pages of {plane[0]}x{plane[1]}); "
         f"read as one stack of {sum(counts)} slices", path)
    return TiffStackSource(path, (sum(counts),) + tuple(plane), dtype, counts), \
        {"voxel_size": 1.0, "dims": ("z", "y", "x"), "series": list(counts)}


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
