"""Step 4: objects from the label maps, written in any format, optionally evaluated against a truth list.

    .venv/bin/python examples/step4_pick.py zarr/t1.zarr --radius 5 -o picks/ --truth truth/t1.xml
"""

import argparse
from pathlib import Path

import tomochunk as tc

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+")
    ap.add_argument("--radius", type=float, default=5, help="mean-shift bandwidth (voxels)")
    ap.add_argument("--min-size", type=int, default=20)
    ap.add_argument("--truth", default=None, help="ground-truth object list (one tomogram)")
    ap.add_argument("-o", "--outdir", required=True)
    args = ap.parse_args()
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    for store in args.stores:
        name = Path(store).stem
        picks = tc.cluster(tc.open_volume(Path(store) / "labels" / "classes"), radius=args.radius,
                           min_size=args.min_size)
        picks["tomo"] = name
        for fmt in ("xml", "star", "csv"):
            tc.write_objects(picks, out / f"{name}.{fmt}")
        print(f"{store}: {len(picks)} objects")
        if args.truth:
            truth = tc.read_objects(args.truth)
            truth["tomo"] = name
            print(tc.evaluate(picks, truth, max_dist=args.radius).to_string(float_format=lambda x: f"{x:.3f}"))
