"""`deinfer profile`: measure a model's latency table, or a co-location, with the profiler.

    deinfer profile MODEL [--batches 1,4,16] [--shares 0.5,1.0] [--runs N] [--csv OUT]
    deinfer profile colocate A[:BATCH[:SHARE]] B[:BATCH[:SHARE]] [C...] [--runs N] [--csv OUT]

Progress is drawn on stderr from the service's stream; the table goes to stdout. `--csv`
appends rows in the schema of `deinfer.profile_csv` (the header once, when the file is new).
Streams have no deadline (profiling can take minutes); Ctrl-C cancels the job.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TextIO

from deinfer.profiler_client import DEFAULT_PROFILER_URL
from deinfer.protos.v1 import profiler_pb2

PROFILER_ENV = "DEINFER_PROFILER_URL"
BAR_WIDTH = 30
COLOCATE = "colocate"


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None


def add_profile_cli(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    profile = commands.add_parser(
        "profile",
        help="measure a model's latency per batch and share, or a co-location",
        description="deinfer profile MODEL: latency table over batches x shares. "
        "deinfer profile colocate A B [C]: run 2 or 3 models at once and measure each one's "
        "slowdown; a member is MODEL[:BATCH[:SHARE]] (defaults: --batch, --share).",
    )
    profile.add_argument("targets", nargs="+", metavar="MODEL", help="MODEL, or colocate A B [C]")
    profile.add_argument(
        "--profiler",
        default=os.environ.get(PROFILER_ENV, DEFAULT_PROFILER_URL),
        metavar="HOST:PORT",
        help=f"profiler address (env {PROFILER_ENV}; default %(default)s)",
    )
    profile.add_argument("--version", default="", metavar="V", help="default: the newest")
    profile.add_argument(
        "--batches", type=_int_list, default=[], metavar="B,B", help="default: the profiler's"
    )
    profile.add_argument(
        "--shares", type=_float_list, default=[], metavar="S,S", help="default: the profiler's"
    )
    profile.add_argument("--batch", type=int, default=1, help="colocate: default member batch")
    profile.add_argument(
        "--share", type=float, default=0.5, help="colocate: default member share (0.5)"
    )
    profile.add_argument("--runs", type=int, default=20, metavar="N", help="timed runs per point")
    profile.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed runs first")
    profile.add_argument("--worker", default="", metavar="ID", help="profile for this worker")
    profile.add_argument(
        "--sequence-length", type=int, default=0, metavar="S", help="tokens (BERT); 0: default"
    )
    profile.add_argument("--csv", default=None, metavar="OUT", help="append the rows to OUT")
    profile.set_defaults(func=run_profile)


def parse_member(text: str, batch: int, share: float) -> profiler_pb2.ColocationMember:
    """MODEL[:BATCH[:SHARE]]; MODEL may carry a version as NAME/VERSION."""
    parts = text.split(":")
    if len(parts) > 3 or not parts[0]:
        raise ValueError(f"member {text!r} is not MODEL[:BATCH[:SHARE]]")
    name, _, version = parts[0].partition("/")
    try:
        if len(parts) > 1:
            batch = int(parts[1])
        if len(parts) > 2:
            share = float(parts[2])
    except ValueError:
        raise ValueError(f"member {text!r} is not MODEL[:BATCH[:SHARE]]") from None
    return profiler_pb2.ColocationMember(model=name, version=version, batch=batch, share=share)


def progress_line(progress: profiler_pb2.ProfileProgress, width: int = BAR_WIDTH) -> str:
    filled = round(progress.fraction * width)
    bar = "#" * filled + "." * (width - filled)
    return f"[{bar}] {100 * progress.fraction:3.0f}% {progress.message}"


def follow(
    stream: Iterable[profiler_pb2.ProfileProgress], out: TextIO
) -> profiler_pb2.ProfileProgress:
    """Draw a progress bar from the stream (one line per message when `out` is no terminal);
    returns the last message."""
    last = None
    tty = out.isatty()
    for progress in stream:
        last = progress
        line = progress_line(progress)
        if tty:
            out.write("\r\033[K" + line)
        else:
            out.write(line + "\n")
        out.flush()
    if tty:
        out.write("\n")
    if last is None:
        raise RuntimeError("the profiler ended the stream without a result")
    return last


def profile_table(profile: profiler_pb2.ModelProfile) -> str:
    features = profile.static_features
    header = (
        f"{profile.model} version {profile.version} on {profile.device_type} "
        f"({profile.device_name}, {profile.device_threads} threads): "
        f"{features.flops / 1e9:.3f} GFLOPs/sample ({features.macs / 1e9:.3f} GMACs), "
        f"{features.params / 1e6:.2f} M params, depth {features.depth}"
    )
    rows = [["batch", "share", "threads", "mean ms", "p50 ms", "p99 ms", "std ms", "runs"]]
    for p in sorted(profile.points, key=lambda p: (p.share, p.batch)):
        rows.append(
            [
                str(p.batch),
                f"{p.share:g}",
                str(p.threads),
                f"{p.mean_ms:.3f}",
                f"{p.p50_ms:.3f}",
                f"{p.p99_ms:.3f}",
                f"{p.std_ms:.3f}",
                str(p.runs),
            ]
        )
    return header + "\n" + _table(rows)


def colocation_table(row: profiler_pb2.ColocationRow) -> str:
    rows = [["member", "batch", "share", "threads", "solo ms", "together ms", "p99 ms", "slowdown"]]
    for member, solo, together, slow in zip(
        row.members, row.solo_points, row.points, row.slowdown, strict=True
    ):
        rows.append(
            [
                f"{member.model}/{member.version}",
                str(member.batch),
                f"{member.share:g}",
                str(member.threads),
                f"{solo.mean_ms:.3f}",
                f"{together.mean_ms:.3f}",
                f"{together.p99_ms:.3f}",
                f"{100 * slow:+.1f} %",
            ]
        )
    return f"co-location {row.experiment_id} on {row.device_type}\n" + _table(rows)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def run_profile(args: argparse.Namespace) -> int:
    from deinfer import profile_csv
    from deinfer.profiler_client import ProfilerClient

    targets: list[str] = args.targets
    colocate = targets[0] == COLOCATE
    if colocate and not 2 <= len(targets) - 1 <= 3:
        print("error: colocate needs 2 or 3 members: colocate A B [C]", file=sys.stderr)
        return 2
    if not colocate and len(targets) != 1:
        print("error: profile one MODEL (or: colocate A B [C])", file=sys.stderr)
        return 2
    with ProfilerClient(args.profiler) as client:
        if colocate:
            try:
                members = [parse_member(t, args.batch, args.share) for t in targets[1:]]
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            stream = client.profile_colocation(
                members, args.runs, args.warmup, args.worker, args.sequence_length
            )
            row = follow(stream, sys.stderr).row
            print(colocation_table(row))
            rows = profile_csv.colocation_rows(row)
        else:
            stream = client.profile_model(
                targets[0],
                args.version,
                args.batches,
                args.shares,
                args.runs,
                args.warmup,
                args.worker,
                args.sequence_length,
            )
            profile = follow(stream, sys.stderr).profile
            print(profile_table(profile))
            rows = profile_csv.solo_rows(profile)
    if args.csv:
        path = profile_csv.write_rows(args.csv, rows, append=True)
        print(f"wrote {len(rows)} row(s) to {path}")
    return 0
