"""``zoo`` subcommand: ``zoo list`` and ``zoo build NAME --out DIR [--seed N]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx
from onnx import helper

from deinfer.zoo import ZOO_MODELS, build_model, get_model, list_models, write_model


def add_zoo_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``zoo`` with its ``list`` and ``build`` actions on a parent CLI."""
    zoo = subparsers.add_parser("zoo", help="generate built-in ONNX models")
    actions = zoo.add_subparsers(dest="zoo_command", required=True, metavar="{build,list}")

    build = actions.add_parser("build", help="write <DIR>/<NAME>.onnx")
    build.add_argument("name", metavar="NAME", help=f"one of: {', '.join(list_models())}")
    build.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    build.add_argument("--seed", type=int, default=0, metavar="N", help="weight seed (default: 0)")
    build.set_defaults(func=run_build)

    listing = actions.add_parser("list", help="list the models the zoo can build")
    listing.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    width = max(map(len, ZOO_MODELS))
    for name in list_models():
        print(f"{name:<{width}}  {ZOO_MODELS[name].description}")
    return 0


def run_build(args: argparse.Namespace) -> int:
    name: str = args.name
    try:
        get_model(name)  # validate before any slow work
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = build_model(name, args.seed)
    try:
        path = write_model(model, Path(args.out) / f"{name}.onnx")
    except OSError as exc:
        print(f"error: cannot write model: {exc}", file=sys.stderr)
        return 1
    size_mb = path.stat().st_size / 1e6
    print(f"wrote {path} ({size_mb:.2f} MB, seed {args.seed})")
    for line in format_signature(model):
        print(f"  {line}")
    return 0


def format_signature(model: onnx.ModelProto) -> list[str]:
    """One line per graph input/output, e.g. ``input  input_ids: int64 [batch, seq]``."""
    graph = model.graph
    return [f"input  {_describe(v)}" for v in graph.input] + [
        f"output {_describe(v)}" for v in graph.output
    ]


def _describe(value: onnx.ValueInfoProto) -> str:
    tensor = value.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    dims = ", ".join(d.dim_param or str(d.dim_value) for d in tensor.shape.dim)
    return f"{value.name}: {dtype} [{dims}]"
