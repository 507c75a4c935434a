"""Step 2: build training targets from object lists and train DeepFinder's U-Net, streaming patches.

    .venv/bin/python examples/step2_train.py zarr/t1.zarr zarr/t2.zarr --objects objl.xml \
        --radii 1:5,2:8 --n-classes 3 -o run1/

Object lists hold every tomogram's objects (column ``tomo`` = the store's name, e.g. ``t1``).
"""

import argparse
from pathlib import Path

import tomochunk as tc

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+")
    ap.add_argument("--objects", required=True)
    ap.add_argument("--radii", required=True, help="class:radius pairs, e.g. 1:5,2:8")
    ap.add_argument("--n-classes", type=int, required=True, help="including background")
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("-o", "--outdir", required=True)
    args = ap.parse_args()
    radii = {int(k): float(v) for k, v in (p.split(":") for p in args.radii.split(","))}
    objects = tc.read_objects(args.objects)
    objects["tomo"] = objects["tomo"].astype(str)
    volumes, targets = {}, {}
    for store in args.stores:
        name = Path(store).stem
        volumes[name] = tc.open_volume(store)
        target = tc.targets.spheres(objects[objects.tomo == name], volumes[name].shape, radii,
                                    chunks=256)  # lazy, chunk by chunk
        targets[name] = tc.write_volume(target, Path(args.outdir) / f"{name}_target.zarr", levels=1,
                                        overwrite=True)
    valid = objects.sample(frac=0.1, random_state=0)
    model, history = tc.train(volumes, targets, objects.drop(valid.index), valid, n_classes=args.n_classes,
                              patch_size=args.patch, epochs=args.epochs, out_dir=args.outdir)
    print(history.tail(1).T)
