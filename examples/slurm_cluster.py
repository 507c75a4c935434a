"""Segment and pick many tomograms on a SLURM cluster with dask-jobqueue.

The only difference from a laptop run is where the Dask client comes from: every
tomochunk function takes ``client=`` (the CLI takes ``--scheduler ADDRESS``).

    pip install dask-jobqueue
    python examples/slurm_cluster.py /data/tomos/*.zarr -m model.keras -o /data/out

GPU nodes: give their workers a ``GPU`` resource (``--resources GPU=1``) and tomochunk
annotates the network tasks with it, so one cluster can mix CPU and GPU workers.
"""

import argparse
from pathlib import Path

import tomochunk as tc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tomograms", nargs="+")
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-o", "--outdir", required=True)
    ap.add_argument("--jobs", type=int, default=4)
    args = ap.parse_args()

    from dask_jobqueue import SLURMCluster
    from distributed import Client

    cluster = SLURMCluster(
        queue="gpu", cores=8, processes=1, memory="64GB", walltime="04:00:00",
        job_extra_directives=["--gres=gpu:1"],
        worker_extra_args=["--resources", "GPU=1"],
        job_script_prologue=["source ~/venvs/tomochunk/bin/activate"],
    )
    cluster.scale(jobs=args.jobs)
    client = Client(cluster)
    print("dashboard:", client.dashboard_link)

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    for path in args.tomograms:
        vol = tc.open_volume(path)
        scores = tc.segment(vol, args.model, client=client)
        objects = tc.cluster(tc.labelmap(scores), radius=5)
        tc.write_objects(objects, out / (Path(path).stem + ".star"))


if __name__ == "__main__":
    main()
