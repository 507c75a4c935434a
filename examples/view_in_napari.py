"""Open a tomochunk OME-Zarr store (image pyramid, label map) and picks in napari.

    pip install napari[all]
    python examples/view_in_napari.py demo_out/phantom.zarr demo_out/picks.xml

napari shows OME-Zarr pyramids lazily: only the visible tiles of the visible level are read.
Points are given in voxels as (z, y, x), with the image's scale in Å, so they line up.
"""

import sys
from pathlib import Path

import tomochunk as tc


def main(store, objects=None):
    import napari

    store = Path(store)
    levels = []
    while True:
        try:
            levels.append(tc.open_volume(store, level=len(levels)))
        except tc.TomochunkError:
            break
    vs = levels[0].attrs["voxel_size"]
    viewer = napari.Viewer()
    viewer.add_image([lv.data for lv in levels], multiscale=True, name=store.stem, scale=(vs,) * 3,
                     contrast_limits=[float(levels[-1].quantile(0.01)), float(levels[-1].quantile(0.99))])
    labels = store / "labels"
    if labels.exists():
        for name in sorted(p.name for p in labels.iterdir() if p.is_dir()):
            lab = tc.open_volume(labels / name)
            if lab.dtype.kind in "iu" and lab.ndim == 3:
                viewer.add_labels(lab.data, name=name, scale=(vs,) * 3)
    if objects:
        df = tc.read_objects(objects)
        for cls, grp in df.groupby("class_label"):
            viewer.add_points(grp[["z", "y", "x"]].to_numpy(), name=f"class {cls}", size=8,
                              scale=(vs,) * 3, face_color="transparent", border_color="yellow")
    napari.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
