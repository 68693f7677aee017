"""Scales the embedded taxi sample to N rows while keeping its distributions.

The first rows are the original sample, verbatim; the rest are rows drawn with replacement from
it (so categorical frequencies, missing-value rates and the joint structure are kept) with small,
seeded jitter on numeric columns:

- fare and tips share one multiplicative factor (the label, tips > 20% of fare, is unchanged);
- trip_miles and trip_seconds share another (speed is unchanged);
- coordinates move by about 100 m;
- trip_start_timestamp moves within its hour, so trip_start_hour/day/month stay consistent.

Empty cells stay empty. Usage: python bench/scale_data.py --rows 100000 --out bench/out/data-100k
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data import taxi_sample  # noqa: E402

PRICE = ("fare", "tips")
TRIP = ("trip_miles", "trip_seconds")
COORDS = ("pickup_latitude", "pickup_longitude", "dropoff_latitude", "dropoff_longitude")
TIMESTAMP = "trip_start_timestamp"
JITTER = 0.05  # sd of the log of the multiplicative factors
COORD_JITTER = 0.001  # degrees, about 100 m


def _scaled(value: str, factor: float, integer: bool) -> str:
    if value == "":
        return value
    x = float(value) * factor
    return str(int(round(x))) if integer else f"{x:.2f}"


def jitter_row(row: dict[str, str], rng: random.Random) -> dict[str, str]:
    out = dict(row)
    price = rng.lognormvariate(0.0, JITTER)
    trip = rng.lognormvariate(0.0, JITTER)
    for col in PRICE:
        out[col] = _scaled(row[col], price, integer=False)
    out["trip_miles"] = _scaled(row["trip_miles"], trip, integer=False)
    out["trip_seconds"] = _scaled(row["trip_seconds"], trip, integer=True)
    for col in COORDS:
        if row[col] != "":
            out[col] = f"{float(row[col]) + rng.gauss(0.0, COORD_JITTER):.9f}"
    if row[TIMESTAMP] != "":
        ts = int(row[TIMESTAMP])
        out[TIMESTAMP] = str(ts - ts % 3600 + rng.randrange(3600))
    return out


def scale(rows: int, out_dir: Path, seed: int = 0, source: Path | None = None) -> Path:
    """Writes out_dir/data.csv with `rows` data rows; returns the file path."""
    source = source or taxi_sample.source_csv()
    with open(source, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        original = list(reader)
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "data.csv"
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(original[:rows])
        for _ in range(rows - min(rows, len(original))):
            writer.writerow(jitter_row(rng.choice(original), rng))
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True, help="number of data rows to write")
    parser.add_argument("--out", type=Path, required=True, help="directory to write data.csv into")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.rows <= 0:
        parser.error("--rows must be positive")
    path = scale(args.rows, args.out, args.seed)
    print(f"wrote {args.rows} rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
