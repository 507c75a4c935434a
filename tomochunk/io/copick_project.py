"""copick projects as input sets, and segmentations written where copick lists them.

A copick project is a JSON config (copick's ``filesystem`` config: ``overlay_root``,
optional ``static_root``, ``pickable_objects``) over this layout (copick 1.31,
``copick.impl.filesystem``)::

    <root>/ExperimentRuns/<run>/VoxelSpacing<vs:.3f>/<tomo_type>.zarr     tomograms (OME-Zarr, NGFF 0.4)
    <root>/ExperimentRuns/<run>/Picks/<user>_<session>_<object>.json     picks (io.objects.copick)
    <root>/ExperimentRuns/<run>/Segmentations/<vs:.3f>_<user>_<session>_<name>[-multilabel].zarr

Runs are the union of both roots' ``ExperimentRuns`` folders; tomograms, picks and
segmentations are read from either root, and written to the overlay root only (the
static root is read-only to copick). A segmentation store is a Zarr 2 group holding
NGFF 0.4 ``multiscales`` at its root, levels ``0``, ``1``, ... (copick's
``write_ome_zarr_3d``); a multilabel one holds, per voxel, the ``label`` of a
pickable object. Only local roots (plain paths, ``local://``, ``file://``) are
supported: tomochunk never reaches the network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._log import get_logger
from .._names import safe_name
from ..errors import ExistsError, FormatError, MissingError, ValueProblem
from .objects.copick import copick_name
from .omezarr import PyramidWriter, label_names
from .volume import open_volume

log = get_logger(__name__)

__all__ = ["CopickProject", "CopickTomogram", "is_copick_config", "open_project", "project_inputs",
           "segmentation_name", "write_copick_segmentation", "object_lut", "export_segmentation"]

_VS = re.compile(r"VoxelSpacing(\d+(?:\.\d*)?)")


@dataclass(frozen=True)
class CopickTomogram:
    """One run's tomogram at one voxel spacing and tomo type: an OME-Zarr store."""

    run: str
    voxel_spacing: float
    tomo_type: str
    path: Path


def is_copick_config(path) -> bool:
    """Whether ``path`` is a copick project config (a JSON object with ``overlay_root`` or ``pickable_objects``).

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "copick.json"
    >>> _ = p.write_text('{"overlay_root": "local:///data/proj", "pickable_objects": []}')
    >>> is_copick_config(p), is_copick_config("picks.json")
    (True, False)
    """
    p = Path(path)
    if p.suffix.lower() != ".json" or not p.is_file():
        return False
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and ("overlay_root" in d or "pickable_objects" in d) and "points" not in d


def _local_root(url, config, key) -> Path:
    text = str(url)
    for prefix in ("local://", "file://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    else:
        if "://" in text:
            raise FormatError(f"{key} {url!r}: only local copick projects are supported (no network access)",
                              config)
    # copick (fsspec) takes a relative root from the working folder; so does this
    return Path(os.path.expanduser(text)).absolute()


@dataclass
class CopickProject:
    """A copick project read from its config; see the module docstring for the layout."""

    config: Path
    overlay: Path
    static: Path | None = None
    objects: dict = field(default_factory=dict)  # {label: name} of the pickable objects

    @property
    def roots(self) -> list:
        """The roots to read from, overlay first (what copick writes there is the newer copy)."""
        return [self.overlay] + ([self.static] if self.static is not None and self.static != self.overlay else [])

    def runs(self) -> list:
        """Run names: the folders of ``ExperimentRuns`` in either root, sorted, hidden ones left out."""
        names = set()
        for root in self.roots:
            d = root / "ExperimentRuns"
            if d.is_dir():
                names |= {p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")}
        return sorted(names)

    def _tomogram_stores(self, run) -> dict:
        """``{(voxel spacing, tomo type): store}`` of one run, overlay first."""
        found = {}
        for root in self.roots:
            for vsd in sorted((root / "ExperimentRuns" / run).glob("VoxelSpacing*")):
                m = _VS.fullmatch(vsd.name)
                if not (m and vsd.is_dir()):
                    continue
                for t in sorted(vsd.glob("*.zarr")):
                    tt = t.name[:-len(".zarr")]
                    # copick leaves out hidden stores and feature stores (<type>_<feature>_features.zarr)
                    if t.is_dir() and not tt.startswith(".") and "features" not in tt:
                        found.setdefault((float(m.group(1)), tt), t)
        return found

    def tomograms(self, voxel_spacing=None, tomo_type=None) -> list:
        """One :class:`CopickTomogram` per run, at ``voxel_spacing`` (Å) and of ``tomo_type``.

        Either defaults to the project's only one; where the project holds several, a
        :class:`~tomochunk.errors.ValueProblem` names the config and lists them. Runs without
        that tomogram are left out (logged); none at all is an error.
        """
        stores = {run: self._tomogram_stores(run) for run in self.runs()}
        every = {k for s in stores.values() for k in s}
        if not every:
            raise MissingError("the copick project has no tomograms "
                               "(ExperimentRuns/<run>/VoxelSpacing<vs>/<type>.zarr)", self.config)
        vs = self._choose(voxel_spacing, sorted({k[0] for k in every}), "voxel spacing", "--voxel-spacing")
        types = sorted({k[1] for k in every if abs(k[0] - vs) < 1e-3})
        tt = self._choose(tomo_type, types, "tomogram type", "--tomo-type")
        out = []
        for run, s in stores.items():
            hit = next((p for (v, t), p in s.items() if abs(v - vs) < 1e-3 and t == tt), None)
            if hit is None:
                log.warning("%s: run %s has no %s tomogram at %.3f Å; left out", self.config, run, tt, vs)
                continue
            out.append(CopickTomogram(run=run, voxel_spacing=vs, tomo_type=tt, path=hit))
        return out

    def _choose(self, wanted, choices, what, option):
        shown = ", ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in choices)
        if wanted is None:
            if len(choices) > 1:
                raise ValueProblem(f"{self.config}: the copick project has several {what}s ({shown}); "
                                   f"choose one with {option}")
            return choices[0]
        if isinstance(choices[0], float):
            hit = [c for c in choices if abs(c - float(wanted)) < 1e-3]
        else:
            hit = [c for c in choices if c == str(wanted)]
        if not hit:
            raise ValueProblem(f"{self.config}: the copick project has no {what} {wanted} (it has {shown})")
        return hit[0]

    def segmentation_path(self, run, voxel_spacing, user, session, name, *, multilabel=True) -> Path:
        """Where copick lists this run's segmentation: ``<overlay>/ExperimentRuns/<run>/Segmentations/<store>``."""
        return self.overlay / "ExperimentRuns" / safe_name(run, "copick run name") / "Segmentations" / \
            segmentation_name(voxel_spacing, user, session, name, multilabel=multilabel)

    def segmentations(self, run, voxel_spacing, *, user=None, session=None, name=None, multilabel=True) -> list:
        """This run's segmentation stores at ``voxel_spacing`` (either root), optionally of one user/session/name."""
        found = {}
        for root in self.roots:
            for p in sorted((root / "ExperimentRuns" / run / "Segmentations").glob("*.zarr")):
                fields = _parse_segmentation(p.name)
                if fields is None or not p.is_dir() or fields["multilabel"] != multilabel:
                    continue
                if abs(fields["voxel_size"] - float(voxel_spacing)) >= 1e-3:
                    continue
                if any(v is not None and fields[k] != str(v) for k, v in
                       (("user", user), ("session", session), ("name", name))):
                    continue
                found.setdefault(p.name, p)
        return list(found.values())

    def segmentation_inputs(self, voxel_spacing=None, *, user=None, session=None, name=None) -> dict:
        """``{store: run}``: each run's one multilabel segmentation (at ``voxel_spacing``, of ``user`` ...).

        The voxel spacing defaults to the only one the matching segmentations have; a run
        with several matching segmentations is an error that lists them.
        """
        found = {}
        for root in self.roots:
            for run in self.runs():
                for p in sorted((root / "ExperimentRuns" / run / "Segmentations").glob("*.zarr")):
                    f = _parse_segmentation(p.name)
                    if f is None or not f["multilabel"] or not p.is_dir():
                        continue
                    if any(v is not None and f[k] != str(v) for k, v in
                           (("user", user), ("session", session), ("name", name))):
                        continue
                    found.setdefault((run, p.name), (f["voxel_size"], p))
        if not found:
            raise MissingError("the copick project has no multilabel segmentation" +
                               ("" if (user, session, name) == (None, None, None) else
                                f" of user {user or '*'}, session {session or '*'}, name {name or '*'}"), self.config)
        vs = self._choose(voxel_spacing, sorted({v for v, _ in found.values()}), "segmentation voxel spacing",
                          "--voxel-spacing")
        per_run = {}
        for (run, store), (v, p) in sorted(found.items()):
            if abs(v - vs) < 1e-3:
                per_run.setdefault(run, []).append(p)
        out = {}
        for run, paths in per_run.items():
            if len(paths) > 1:
                raise ValueProblem(f"{self.config}: run {run} has several multilabel segmentations "
                                   f"({', '.join(p.name for p in paths)}); choose with --seg-user, --seg-session "
                                   "and --seg-name")
            out[paths[0]] = run
        return out


def _parse_segmentation(store_name):
    """copick's ``parse_segmentation_store_name`` for the ``Segmentations`` folder (None: not one)."""
    stem = store_name[:-len(".zarr")] if store_name.endswith(".zarr") else store_name
    parts = stem.split("_", 3)
    if len(parts) != 4 or stem.startswith("."):
        return None
    vs, user, session, name = parts
    try:
        vs = float(vs)
    except ValueError:
        return None
    multilabel = name.endswith("-multilabel")
    name = name[:-len("-multilabel")] if multilabel else name
    if not (user and session and name):
        return None
    return {"voxel_size": vs, "user": user, "session": session, "name": name, "multilabel": multilabel}


def segmentation_name(voxel_spacing, user, session, name, *, multilabel=True) -> str:
    """copick's ``segmentation_store_name``: ``<vs:.3f>_<user>_<session>_<name>[-multilabel].zarr``.

    Examples
    --------
    >>> segmentation_name(10, "tomochunk", "0", "segmentation")
    '10.000_tomochunk_0_segmentation-multilabel.zarr'
    """
    return f"{float(voxel_spacing):.3f}_{copick_name(user, 'copick user')}_{copick_name(session, 'copick session')}_" \
           f"{safe_name(name, 'copick segmentation name')}{'-multilabel' if multilabel else ''}.zarr"


def open_project(path) -> CopickProject:
    """Read a copick ``filesystem`` project config.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "copick.json"
    >>> _ = p.write_text(json.dumps({"overlay_root": "local:///data/proj",
    ...                              "pickable_objects": [{"name": "ribosome", "label": 1}]}))
    >>> prj = open_project(p)
    >>> prj.overlay.as_posix(), prj.objects
    ('/data/proj', {1: 'ribosome'})
    """
    p = Path(path)
    if not p.is_file():
        raise MissingError("no such copick config", p)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise FormatError(f"not a copick config (malformed JSON: {e})", p) from None
    if not isinstance(d, dict) or "overlay_root" not in d:
        raise FormatError("not a copick filesystem config (no 'overlay_root')", p)
    kind = d.get("config_type", "filesystem")
    if kind != "filesystem":
        raise FormatError(f"copick config_type {kind!r}: only 'filesystem' projects are supported", p)
    objects = {}
    for i, o in enumerate(d.get("pickable_objects") or []):
        if not isinstance(o, dict) or "name" not in o:
            raise FormatError(f"pickable_objects[{i}] has no name", p)
        label = o.get("label", i + 1)  # copick numbers unlabelled objects from 1, in order
        objects[int(label)] = str(o["name"])
    static = d.get("static_root")
    return CopickProject(config=p, overlay=_local_root(d["overlay_root"], p, "overlay_root"),
                         static=None if static is None else _local_root(static, p, "static_root"), objects=objects)


def project_inputs(inputs, *, voxel_spacing=None, tomo_type=None):
    """``(project, tomograms)`` when ``inputs`` is one copick config, else ``(None, None)``.

    A copick config among other inputs is refused: its runs and the files would share names.
    """
    inputs = [os.fspath(i) for i in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    configs = [i for i in inputs if is_copick_config(i)]
    if not configs:
        if voxel_spacing is not None or tomo_type is not None:
            raise ValueProblem("--voxel-spacing and --tomo-type choose the tomograms of a copick project; "
                               "the inputs are not one")
        return None, None
    if len(inputs) > 1:
        raise ValueProblem(f"{configs[0]}: a copick project is the whole input set; give it alone")
    project = open_project(configs[0])
    return project, project.tomograms(voxel_spacing, tomo_type)


def write_copick_segmentation(labels, path, *, voxel_size, lut=None, levels=1, chunks=256, overwrite=False,
                              classes=None):
    """Write a label map as a copick segmentation store (Zarr 2, NGFF 0.4 ``multiscales`` at its root).

    Parameters
    ----------
    labels : xarray.DataArray or array-like
        ``[z, y, x]`` integer labels (lazy: read one storage chunk at a time).
    path : path-like
        The store, e.g. :meth:`CopickProject.segmentation_path`.
    voxel_size : float
        Å per voxel (the voxel spacing of the tomogram).
    lut : array-like, optional
        ``value -> lut[value]`` before writing, e.g. model classes to the pickable objects' labels.
    levels : int
        Levels ``0``, ``1``, ... (striding; copick writes 1 by default).
    classes : dict, optional
        ``{value: name}`` of the written values, kept as NGFF ``image-label`` properties.

    Returns
    -------
    Path
        The store.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> lab = np.zeros((4, 4, 4), np.uint8); lab[1, 1, 1] = 1
    >>> p = write_copick_segmentation(lab, d / "10.000_me_1_seg-multilabel.zarr", voxel_size=10.0, lut=[0, 3])
    >>> import zarr; int(zarr.open_array(str(p / "0"))[1, 1, 1]), sorted(x.name for x in p.iterdir())[:2]
    (3, ['.zattrs', '.zgroup'])
    """
    data = labels.data if hasattr(labels, "dims") else labels  # xarray: its (dask) array
    if len(np.shape(data)) != 3:
        raise ValueProblem(f"a copick segmentation is a [z, y, x] label map, not {len(np.shape(data))}D", path)
    table = None if lut is None else np.asarray(lut)
    dtype = np.uint8 if table is None or int(table.max(initial=0)) < 256 else np.uint16

    def read(region):
        block = np.asarray(data[tuple(region)])
        return (table[block] if table is not None else block).astype(dtype, copy=False)

    path = Path(path)
    if path.exists() and not overwrite:
        raise ExistsError("copick segmentation exists; pass overwrite=True (--overwrite) to replace it", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # written under a hidden name, which copick does not list, then renamed: copick never sees half a store
    tmp = path.with_name(f".{path.name}.tmp")
    w = PyramidWriter(tmp, np.shape(data), dtype, dims=("z", "y", "x"), voxel_size=float(voxel_size), levels=levels,
                      chunks=chunks, label=True, ngff="0.4", overwrite=True, name=path.name, classes=classes)
    w.write(read)
    w.finish()
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    log.info("wrote copick segmentation %s", path)
    return path


def object_lut(classes, objects):
    """Class label -> pickable object label, where every named class is one of the project's objects.

    A multilabel copick segmentation holds the objects' ``label`` values, so classes named after
    them are renumbered; ``None`` (labels kept) when a class has no name or no such object.

    Examples
    --------
    >>> object_lut({1: "proteasome", 2: "ribosome"}, {1: "ribosome", 2: "proteasome"}).tolist()
    [0, 2, 1]
    >>> object_lut({1: "membrane"}, {1: "ribosome"}) is None
    True
    """
    if not classes:
        return None
    by_name = {v: k for k, v in objects.items()}
    if not all(str(n) in by_name for n in classes.values()):
        return None
    lut = np.arange(max(int(k) for k in classes) + 1)
    for k, n in classes.items():
        lut[int(k)] = by_name[str(n)]
    return lut


def export_segmentation(project, tomogram, labels_store, *, user="tomochunk", session="0", name="segmentation",
                        overwrite=False) -> Path:
    """Write a segmentation's label map (``<store>/labels/classes``) where copick lists it, as multilabel.

    Classes named after the project's pickable objects get their ``label`` values
    (:func:`object_lut`); others keep the model's class numbers (logged).
    """
    src = Path(labels_store) / "labels" / "classes"
    lab = open_volume(src)
    names = label_names(lab)
    lut = object_lut(names, project.objects)
    if lut is not None:
        names = {int(lut[k]): v for k, v in names.items()}
    else:
        log.info("%s: the classes are not all named after pickable objects of %s; the model's class numbers "
                 "are written", src, project.config)
    dst = project.segmentation_path(tomogram.run, tomogram.voxel_spacing, user, session, name)
    return write_copick_segmentation(lab, dst, voxel_size=tomogram.voxel_spacing, lut=lut, overwrite=overwrite,
                                     classes=names or None)
