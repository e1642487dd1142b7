"""Build the sample market shipped in `broker/sample/` from the public data set.

It lives beside the benchmarks because both derive their input from `../shared/data`.
Usage: `python bench/make_sample.py [DATA_DIR]` (default `../shared/data`). Keeps three
anycloud snapshots, every row except GCP TPU slices (1648 of 2395 GCP rows, which would
triple the size), byte for byte with the original header and line endings.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAPSHOTS = ("2026-04-20", "2026-05-08T1849", "2026-05-20")
MAX_BYTES = 1_000_000


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "data"
    out = REPO / "broker" / "sample"
    for old in out.iterdir() if out.exists() else []:
        if old.is_dir():
            shutil.rmtree(old)
    for snap in SNAPSHOTS:
        for src in sorted((data / "offers" / snap).rglob("*.csv")):
            dst = out / snap / src.relative_to(data / "offers" / snap)
            dst.parent.mkdir(parents=True, exist_ok=True)
            lines = src.read_bytes().splitlines(keepends=True)
            keep = [ln for ln in lines if not (src.stem == "gcp" and b",tpu-" in ln)]
            dst.write_bytes(b"".join(keep))
    # Provenance: the snapshots' lines of the data set's snapshots.csv (commit, commit time).
    index = (data / "snapshots.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "snapshots.csv").write_text(
        "".join([index[0]] + [ln for ln in index[1:] if ln.split(",", 1)[0] in SNAPSHOTS]),
        encoding="utf-8",
    )
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"sample: {size} bytes in {out}")
    if size > MAX_BYTES:
        raise SystemExit(f"sample is {size} bytes, over the {MAX_BYTES} limit")


if __name__ == "__main__":
    main()
