"""Real CPU profiles of zoo models through the real profiler service.

Starts the local stack (Redis, controller, profiler, one worker), registers zoo models with
the controller, then asks the profiler (gRPC, `deinfer.profiler_client`) for
- solo tables: batches x shares for each model (share 0.5 / 1.0 = 1 / 2 of this machine's
  2 threads), N timed runs after warm-up per point;
- co-location rows: pairs (and a triple) of models at several share splits and batches.
With `--repeats R` the whole plan is measured R times in passes (pass 2 starts after pass 1
ends), so a change in the machine's background load spreads over all configurations instead
of biasing some; every pass keeps its own rows. Writes `solo.csv` and `colocation.csv` (one
schema, `deinfer.profile_csv`) and `host_load.csv` (the 1- and 5-minute load averages right
after each experiment) under `--out`, and prints the tables.

    python bench/profile_cpu.py [--out data/cpu-profiles] [--runs 20] [--coloc-runs 10]
        [--repeats 1]
        [--quick]   # tiny models and few runs: a smoke test of the whole pipeline
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deinfer import Client, profile_csv
from deinfer.local_stack import LocalStack
from deinfer.profiler_client import ProfilerClient
from deinfer.protos.v1 import profiler_pb2
from deinfer.zoo import save_model

SOLO_MODELS = ["mobilenet_v2", "resnet18", "resnet50", "tiny_bert", "bert"]
BATCHES = [1, 2, 4, 8]
SHARES = [0.5, 1.0]
# Share splits of a pair: disjoint cores, one oversubscribed core, both on both cores.
SPLITS: list[tuple[float, ...]] = [(0.5, 0.5), (1.0, 0.5), (1.0, 1.0)]
PAIRS = [
    ("mobilenet_v2", "resnet18"),
    ("mobilenet_v2", "tiny_bert"),
    ("mobilenet_v2", "bert"),
    ("resnet18", "resnet50"),
    ("resnet18", "bert"),
]
PAIR_BATCHES = [1, 4]
TRIPLES = [("mobilenet_v2", "resnet18", "tiny_bert")]
TRIPLE_SPLITS: list[tuple[float, ...]] = [(0.5, 0.5, 0.5), (1.0, 0.5, 0.5)]


@dataclass(frozen=True)
class Plan:
    solo_models: list[str]
    batches: list[int]
    pairs: list[tuple[str, ...]]
    splits: list[tuple[float, ...]]
    pair_batches: list[int]
    triples: list[tuple[str, ...]]
    triple_splits: list[tuple[float, ...]]


FULL = Plan(SOLO_MODELS, BATCHES, list(PAIRS), SPLITS, PAIR_BATCHES, list(TRIPLES), TRIPLE_SPLITS)
QUICK = Plan(
    ["tiny_cnn", "tiny_bert"],
    [1, 2],
    [("tiny_cnn", "tiny_bert")],
    [(0.5, 0.5)],
    [1],
    [],
    [],
)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def last(stream: Iterator[profiler_pb2.ProfileProgress]) -> profiler_pb2.ProfileProgress:
    result = None
    for progress in stream:
        say(f"  {100 * progress.fraction:3.0f}% {progress.message}")
        result = progress
    assert result is not None
    return result


def solo_table(profiles: list[profiler_pb2.ModelProfile]) -> str:
    lines = [
        f"{'model':<14}{'GFLOPs':>8}{'batch':>6}{'share':>6}{'thr':>4}"
        f"{'mean ms':>10}{'p50 ms':>10}{'p99 ms':>10}{'std ms':>9}{'ms/sample':>10}"
    ]
    for profile in profiles:
        for p in sorted(profile.points, key=lambda p: (p.share, p.batch)):
            lines.append(
                f"{profile.model:<14}{profile.static_features.flops / 1e9:>8.3f}{p.batch:>6}"
                f"{p.share:>6g}{p.threads:>4}{p.mean_ms:>10.2f}{p.p50_ms:>10.2f}"
                f"{p.p99_ms:>10.2f}{p.std_ms:>9.2f}{p.mean_ms / p.batch:>10.2f}"
            )
    return "\n".join(lines)


def colocation_table(rows: list[profiler_pb2.ColocationRow]) -> str:
    lines = [
        f"{'member':<14}{'batch':>6}{'share':>6}{'thr':>4}{'solo ms':>10}"
        f"{'together ms':>12}{'p99 ms':>10}{'slowdown':>10}  co-runners"
    ]
    for row in rows:
        for i, m in enumerate(row.members):
            others = ", ".join(
                f"{o.model}:{o.batch}:{o.share:g}" for j, o in enumerate(row.members) if j != i
            )
            lines.append(
                f"{m.model:<14}{m.batch:>6}{m.share:>6g}{m.threads:>4}"
                f"{row.solo_latency_ms[i]:>10.2f}{row.latency_ms[i]:>12.2f}"
                f"{row.points[i].p99_ms:>10.2f}{100 * row.slowdown[i]:>9.1f}%  {others}"
            )
    return "\n".join(lines)


def colocations(plan: Plan) -> list[list[tuple[str, int, float]]]:
    runs: list[list[tuple[str, int, float]]] = []
    for pair in plan.pairs:
        for split in plan.splits:
            for batch in plan.pair_batches:
                runs.append([(m, batch, s) for m, s in zip(pair, split, strict=True)])
    for triple in plan.triples:
        for split in plan.triple_splits:
            runs.append([(m, 1, s) for m, s in zip(triple, split, strict=True)])
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/cpu-profiles"))
    parser.add_argument("--runs", type=int, default=20, help="timed runs per solo point")
    parser.add_argument("--coloc-runs", type=int, default=10, help="timed runs per member")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="passes over the whole plan")
    parser.add_argument("--quick", action="store_true", help="tiny models, a smoke test")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    models = sorted({*plan.solo_models, *(m for p in plan.pairs + plan.triples for m in p)})

    with tempfile.TemporaryDirectory(prefix="deinfer-profile-") as tmp:
        zoo = Path(tmp) / "zoo"
        for name in models:
            say(f"building {name}")
            save_model(name, zoo)
        with LocalStack(workers=1, state_dir=Path(tmp) / "stack", progress=say) as stack:
            with Client(stack.url, controller_url=stack.controller_url, timeout=120) as client:
                for name in models:
                    client.register_model(name, str(zoo / f"{name}.onnx"), slo_ms=60_000.0)
                    # Profiles need only the registry: no instance should compete for cores.
                    client.set_model_loaded(name, False)
            time.sleep(3.0)  # let the worker unload what it had started to load
            profiles = []
            rows = []
            load: list[tuple[str, float, float]] = []
            with ProfilerClient(stack.profiler_url) as profiler:
                for repeat in range(args.repeats):
                    for name in plan.solo_models:
                        say(f"pass {repeat + 1}/{args.repeats}: profiling {name}")
                        stream = profiler.profile_model(
                            name, "", plan.batches, SHARES, args.runs, args.warmup
                        )
                        profiles.append(last(stream).profile)
                        solo_id = str(profile_csv.solo_rows(profiles[-1])[0]["experiment_id"])
                        load.append((solo_id, *os.getloadavg()[:2]))
                    for members in colocations(plan):
                        say(f"pass {repeat + 1}/{args.repeats}: co-locating {members}")
                        stream = profiler.profile_colocation(members, args.coloc_runs, args.warmup)
                        rows.append(last(stream).row)
                        load.append((rows[-1].experiment_id, *os.getloadavg()[:2]))

    solo = [r for p in profiles for r in profile_csv.solo_rows(p)]
    together = [r for row in rows for r in profile_csv.colocation_rows(row)]
    profile_csv.write_rows(args.out / "solo.csv", solo)
    profile_csv.write_rows(args.out / "colocation.csv", together)
    with (args.out / "host_load.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["experiment_id", "load_1m", "load_5m"])
        writer.writerows((e, f"{a:.2f}", f"{b:.2f}") for e, a, b in load)
    device = profiles[0]
    print(f"device: {device.device_type}, {device.device_name}, {device.device_threads} threads")
    print(f"solo profiles ({args.runs} timed runs after {args.warmup} warm-up per point)")
    print(solo_table(profiles))
    print(f"\nco-location ({args.coloc_runs} timed runs per member, inside the common window)")
    print(colocation_table(rows))
    print(f"\nwrote {len(solo)} solo rows and {len(together)} co-location rows under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
