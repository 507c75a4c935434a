"""A tomogram larger than a laptop's comfort zone, processed with bounded memory.

Generates a >= 4 GB float32 phantom block by block straight into OME-Zarr (nothing holds the
whole volume), then segments it with the shipped model and picks particles, each step streaming
chunk by chunk on a LocalCluster. Peak memory is set by the chunk sizes, not by the volume.

    .venv/bin/python examples/large_data.py -o large_out            # 512x1440x1440 (4 GB)
    .venv/bin/python examples/large_data.py --shape 256,768,768      # a quicker 0.6 GB run

On 2 CPU cores the segmentation of the 4 GB volume takes hours; on a GPU cluster pass
--scheduler tcp://head:8786 and it runs on every GPU worker.
"""

import argparse
import logging
import time
from pathlib import Path

import tomochunk as tc
from tomochunk.parallel import client_context
from tomochunk.io.omezarr import is_complete
from tomochunk.pipeline import shipped_model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--outdir", default="large_out")
    ap.add_argument("--shape", default="512,1440,1440")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scheduler", default=None)
    ap.add_argument("--skip-segment", action="store_true", help="only generate and convert")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    shape = tuple(int(v) for v in args.shape.split(","))
    store = out / "large.zarr"

    with client_context(scheduler=args.scheduler, n_workers=args.workers, memory_limit="4GiB") as client:
        print("dashboard:", client.dashboard_link)
        t = time.perf_counter()
        vol, truth, labels = tc.phantom_tomogram(shape, classes=4, seed=3, chunks=256)
        print(f"phantom {shape}: {vol.nbytes / 1e9:.1f} GB float32, {len(truth)} particles (lazy)")
        tc.write_objects(truth, out / "truth.xml")
        if not (store.exists() and is_complete(store)):
            tc.write_volume(vol, store, voxel_size=truth.attrs["voxel_size"], levels=3)  # streams, resumable
        print(f"written {store} in {time.perf_counter() - t:.0f} s")
        if args.skip_segment:
            return
        t = time.perf_counter()
        scores = tc.segment(tc.open_volume(store), shipped_model("phantom"), patch_size=96, crop=12,
                            client=client)
        tc.write_segmentation(scores, store, client=client, progress=True)
        print(f"segmented in {time.perf_counter() - t:.0f} s")
        picks = tc.cluster(tc.open_volume(store / "labels" / "classes"), radius=6, min_size=80, method="cc")
    tc.write_objects(picks, out / "picks.star")
    truth["tomo"] = picks["tomo"] = 0
    print(tc.evaluate(picks, truth, max_dist=5).to_string(float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()
