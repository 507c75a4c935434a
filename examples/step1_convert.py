"""Step 1: convert tomograms (MRC/REC/HDF5/TIFF) or TIFF-frame folders to OME-Zarr.

    .venv/bin/python examples/step1_convert.py data/*.mrc -o zarr/
"""

import argparse
from pathlib import Path

import tomochunk as tc
from tomochunk.io.convert import output_name

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("-o", "--outdir", required=True)
    args = ap.parse_args()
    for src in args.inputs:
        dst = Path(args.outdir) / output_name(src)
        stats = tc.convert(src, dst, progress=True)  # streaming, resumable: rerun after a crash
        vol = tc.open_volume(dst)
        print(f"{src} -> {dst}: {vol.dims} {vol.shape}, {vol.attrs['voxel_size']} Å/voxel, "
              f"mean {stats['mean']:.3g} std {stats['std']:.3g}")
