"""Placement speed and stickiness: 10,000 adapter versions on 100 workers.

Target: a full placement in under 1 s on this CPU. Also reports how many replicas move
(additions + removals) when the demand of 1% of the versions changes, and when one
worker dies. Demand is Zipf-distributed, like adapter popularity in multi-tenant serving.
"""

from __future__ import annotations

import argparse
import random
import time

from benchmarks.results import append_rows
from lorafleet.controlplane.placement import VersionDemand, WorkerCapacity, count_moves, place

TARGET_SECONDS = 1.0


def _versions(num: int, rng: random.Random) -> list[VersionDemand]:
    # Zipf(1.1) popularity scaled so the hottest version wants tens of replicas.
    return [
        VersionDemand(f"t{i % 100}/a{i}", 1, "base", demand=200.0 / (rank + 1) ** 1.1)
        for rank, i in enumerate(rng.sample(range(num), num))
    ]


def _change_demand(versions, fraction: float, rng: random.Random) -> list[VersionDemand]:
    changed = list(versions)
    for index in rng.sample(range(len(versions)), int(len(versions) * fraction)):
        old = changed[index]
        changed[index] = VersionDemand(
            old.adapter, old.version, old.base_model, demand=old.demand * rng.uniform(0, 4)
        )
    return changed


def _timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def run(num_versions: int, num_workers: int, capacity: int, seed: int) -> list[dict]:
    """Runs the three scenarios and returns one result row per scenario."""
    rng = random.Random(seed)
    versions = _versions(num_versions, rng)
    workers = [WorkerCapacity(f"w{i:03d}", "base", capacity) for i in range(num_workers)]
    first, seconds = _timed(place, versions, workers, {})
    rows = [_row("initial", seconds, first, count_moves({}, first))]
    changed = _change_demand(versions, 0.01, rng)
    after, seconds = _timed(place, changed, workers, first)
    rows.append(_row("1% demand change", seconds, after, count_moves(first, after)))
    survivors = workers[1:]
    healed, seconds = _timed(place, versions, survivors, first)
    rows.append(_row("one worker dies", seconds, healed, count_moves(first, healed)))
    for row in rows:
        row.update(num_versions=num_versions, num_workers=num_workers, capacity=capacity)
    return rows


def _row(scenario: str, seconds: float, placement, num_moves: int) -> dict:
    num_replicas = sum(len(ids) for ids in placement.values())
    return {
        "scenario": scenario,
        "seconds": round(seconds, 4),
        "num_replicas": num_replicas,
        "num_unplaced": sum(1 for ids in placement.values() if not ids),
        "num_moves": num_moves,
        "meets_target": seconds < TARGET_SECONDS,
    }


def main(argv=None) -> int:
    """Prints a table and appends JSON lines to benchmarks/results/placement.jsonl."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--capacity", type=int, default=256, help="versions a worker may hold (its host tier)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = run(args.versions, args.workers, args.capacity, args.seed)
    print(f"placement: {args.versions} versions on {args.workers} workers x {args.capacity} versions each"
          f" (target < {TARGET_SECONDS:.0f} s)")
    print(f"{'scenario':<18} {'seconds':>8} {'replicas':>9} {'unplaced':>9} {'moves':>7}")
    for row in rows:
        print(f"{row['scenario']:<18} {row['seconds']:>8.3f} {row['num_replicas']:>9}"
              f" {row['num_unplaced']:>9} {row['num_moves']:>7}")
    append_rows("placement", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
