"""Train the small phantom model shipped in the package (``tomochunk/models/phantom_unet.keras``).

It is trained on generated phantoms only, so that ``make demo`` needs no download:

    .venv/bin/python examples/train_phantom_model.py            # ~20 min on 2 CPU cores
    .venv/bin/python examples/train_phantom_model.py --install  # also replace the shipped model

The network is DeepFinder's U-Net with a quarter of its filters (16/24/32): the demo phantom's
shapes need no more, and it segments 4x faster on a CPU.
"""

import argparse
import json
import logging
import shutil
from pathlib import Path

import pandas as pd

import tomochunk as tc

HERE = Path(__file__).resolve().parent
SHIPPED = HERE.parent / "tomochunk" / "models"
CLASSES = 4
FILTERS = (16, 24, 32)


def make_data(n, shape, seed0):
    volumes, targets, objects = {}, {}, []
    for i in range(n):
        vol, obj, lab = tc.phantom_tomogram(shape, classes=CLASSES, seed=seed0 + i, snr=1.0, tomo=i)
        volumes[i], targets[i] = vol, lab
        objects.append(obj)
    objs = pd.concat(objects, ignore_index=True)
    objs.attrs.update(objects[0].attrs)
    return volumes, targets, objs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--outdir", default="train_out/phantom_model")
    ap.add_argument("--tomograms", type=int, default=4)
    ap.add_argument("--shape", default="96,192,192")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--install", action="store_true", help="copy the result into tomochunk/models/")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    shape = tuple(int(v) for v in args.shape.split(","))
    volumes, targets, objs = make_data(args.tomograms, shape, seed0=1000)
    valid = objs[objs.tomo == args.tomograms - 1]
    train_objs = objs[objs.tomo != args.tomograms - 1]
    import keras

    from tomochunk.nn.losses import DiceCrossEntropyLoss

    # Dice + cross-entropy: Dice alone stays on "all background" for hundreds of steps here
    net = tc.deepfinder_unet(CLASSES + 1, filters=FILTERS)
    net.compile(optimizer=keras.optimizers.Adam(learning_rate=args.lr), loss=DiceCrossEntropyLoss())
    model, hist = tc.train(volumes, targets, train_objs, valid, n_classes=CLASSES + 1, patch_size=args.patch,
                           batch_size=args.batch, epochs=args.epochs, steps_per_epoch=args.steps, lr=args.lr,
                           model=net, out_dir=args.outdir, checkpoint_every=10, legacy_h5=False, seed=0)
    print(hist.tail(3).to_string())
    out = Path(args.outdir)
    meta = {"title": "DeepFinder U-Net (16/24/32 filters) trained on tomochunk phantoms",
            "classes": {str(k): v for k, v in objs.attrs["classes"].items()},
            "voxel_size": objs.attrs["voxel_size"], "patch_size": args.patch, "n_classes": CLASSES + 1,
            "trained_with": "examples/train_phantom_model.py " + " ".join(argv or []),
            "final_val_f1": {c: float(hist[f"val_f1_{c}"].iloc[-1]) for c in range(1, CLASSES + 1)}}
    (out / "phantom_unet.json").write_text(json.dumps(meta, indent=2))
    if args.install:
        SHIPPED.mkdir(exist_ok=True)
        shutil.copy(out / "model_final.keras", SHIPPED / "phantom_unet.keras")
        shutil.copy(out / "phantom_unet.json", SHIPPED / "phantom_unet.json")
        print(f"installed into {SHIPPED}")


if __name__ == "__main__":
    main()
