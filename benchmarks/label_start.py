"""Where `emokp label`'s start goes as the input count grows: the listing and Ray Data's own start
over the same work rows, without any image work, side by side for several input counts.

    python benchmarks/label_start.py                      # 10,000 and 100,000 inputs, then 10,000 again
    python benchmarks/label_start.py --n 10000 1000000

For each count, a folder of that many empty .png files (made once, under --tmp) is listed by
`emokp label`'s own listing (`label._write_listing`: OUT/_work chunks and listing.json), then read back
by its own work dataset (`label._work_dataset`: read_parquet + repartition into 256-row blocks),
through one map_batches that only counts rows. Reported: the listing's seconds, seconds to the first
block out of Ray Data and to the last. No file is opened, decoded or labeled, so what grows here
with the input count is the listing and Ray Data's planning; what a real run adds on top (stages A,
B and C over real images) is benchmarks/label_memory.py's and label_throughput.py's to measure.
The first count runs cold (Ray Data's first dataset in the process); --n repeats it last to show
that.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.harness import add_out_argument, load_average, save


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 10_000], help="input counts, in order")
    parser.add_argument("--tmp", type=Path, default=Path("/tmp/emokp-label-start"), help="where the empty files go")
    add_out_argument(parser, "label_start")
    args = parser.parse_args(argv)
    import pyarrow.fs as pafs

    from emokp_ray.inference import label
    from emokp_ray.inference.label_inputs import resolve_input
    from emokp_ray.ray_utils import init_ray

    init_ray()
    fs = pafs.LocalFileSystem()
    rows: list[dict] = []
    for n in args.n:
        folder = args.tmp / f"inputs-{n}"
        if not (folder / f"{n - 1:08d}.png").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i:08d}.png").touch()
        out = args.tmp / f"out-{n}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        started = time.perf_counter()
        spec = resolve_input(str(folder))
        listing = label._write_listing(spec, fs, str(out), progress=False)
        listed = time.perf_counter() - started
        ds = label._work_dataset(spec, listing, fs, 256).map_batches(
            lambda block: {"rows": [len(block["source"])]}, batch_size=None
        )
        started, first, total = time.perf_counter(), None, 0
        for batch in ds.iter_batches(batch_size=None):
            first = time.perf_counter() - started if first is None else first
            total += int(sum(batch["rows"]))
        assert total == n, (total, n)
        row = {
            "inputs": n,
            "listing_s": round(listed, 2),
            "listing_files": len(listing.files),
            "first_block_s": round(first or 0.0, 2),
            "all_blocks_s": round(time.perf_counter() - started, 2),
            "load_1m": load_average(),
        }
        rows.append(row)
        print(
            f"{n:>9,} inputs: listing {row['listing_s']:.1f} s ({row['listing_files']} chunk files), Ray Data "
            f"first block {row['first_block_s']:.1f} s, all {row['all_blocks_s']:.1f} s (load {row['load_1m']})",
            flush=True,
        )
    return save({"rows": rows}, args.out)


if __name__ == "__main__":
    main()
