"""Segment and pick many tomograms on a SLURM cluster with dask-jobqueue.

The only difference from a laptop run is where the Dask client comes from: every
tomochunk function takes ``client=`` (the CLI takes ``--cluster slurm --jobs N ...`` or
``--scheduler ADDRESS``).

    pip install 'tomochunk[slurm]'
    python examples/slurm_cluster.py /data/tomos/*.zarr -m model.keras -o /data/out --jobs 4 --gpus 1

``tomochunk.parallel.get_client(cluster="slurm", ...)`` does the same in one call (and reads
dask's ``jobqueue.yaml``); this example spells the dask-jobqueue set-up out:

- GPU jobs ask SLURM for GPUs (``--gres=gpu:1``) and their workers advertise a ``GPU``
  resource (``--resources GPU=1``); tomochunk annotates the network tasks with it, so one
  cluster can mix CPU and GPU workers.
- Each worker's TensorFlow gets the job's cores (``TF_NUM_INTRAOP_THREADS``) and one
  inter-op thread; by default it sizes its pools for the whole node.
- ``adapt(minimum_jobs=N, maximum_jobs=N)`` holds the job count: a job that dies is
  resubmitted. ``scale(jobs=N)`` would not replace it.
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
    ap.add_argument("--cores", type=int, default=8, help="cores per job (one worker per job)")
    ap.add_argument("--memory", default="64GB", help="memory per job")
    ap.add_argument("--gpus", type=int, default=1, help="GPUs per job (0: CPU jobs)")
    ap.add_argument("--queue", default=None, help="partition")
    ap.add_argument("--walltime", default="04:00:00")
    ap.add_argument("--prologue", action="append", default=[],
                    help="job script line, e.g. 'source ~/venvs/tomochunk/bin/activate' (repeatable)")
    args = ap.parse_args()

    from dask_jobqueue import SLURMCluster
    from distributed import Client

    threads = [f"export TF_NUM_INTRAOP_THREADS={args.cores}", "export TF_NUM_INTEROP_THREADS=1"]
    gpu = args.gpus > 0
    cluster = SLURMCluster(
        queue=args.queue, cores=args.cores, processes=1, memory=args.memory, walltime=args.walltime,
        job_extra_directives=[f"--gres=gpu:{args.gpus}"] if gpu else [],
        worker_extra_args=["--resources", f"GPU={args.gpus}"] if gpu else [],
        job_script_prologue=[*args.prologue, *threads],
    )
    cluster.adapt(minimum_jobs=args.jobs, maximum_jobs=args.jobs)  # lost jobs are resubmitted
    client = Client(cluster)
    client.wait_for_workers(args.jobs)  # GPU workers must be there when the graph is annotated
    print("dashboard:", client.dashboard_link)

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for path in args.tomograms:
            vol = tc.open_volume(path)
            scores = tc.segment(vol, args.model, client=client)
            objects = tc.cluster(tc.labelmap(scores), radius=5, min_size=20)
            tc.write_objects(objects, out / (Path(path).stem + ".star"))
    finally:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
