"""Step 3: segment OME-Zarr tomograms on a Dask cluster and write scores + label maps into each store.

    .venv/bin/python examples/step3_segment.py zarr/*.zarr -m run1/model_final.keras
    .venv/bin/python examples/step3_segment.py zarr/*.zarr -m net_weights_FINAL.h5 --scheduler tcp://head:8786
"""

import argparse

import tomochunk as tc
from tomochunk.parallel import client_context

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+")
    ap.add_argument("-m", "--model", required=True, help=".keras or DeepFinder .h5")
    ap.add_argument("--patch", type=int, default=160)
    ap.add_argument("--crop", type=int, default=25)
    ap.add_argument("--scheduler", default=None)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with client_context(scheduler=args.scheduler, n_workers=args.workers) as client:
        print("dashboard:", client.dashboard_link)
        for store in args.stores:
            scores = tc.segment(tc.open_volume(store), args.model, patch_size=args.patch, crop=args.crop,
                                client=client)
            print(store, "->", tc.write_segmentation(scores, store, client=client, progress=True))
