"""Tables the CLI prints, from typed records (pure functions)."""

from __future__ import annotations

import pytest

from deinfer import cli_format
from deinfer.protos.v1 import common_pb2
from deinfer.records import ClusterStatus, InstanceStatus, ModelInfo, Plan, WorkerStatus
from tests.unit.test_sdk_client import sample_plan


def _model(name: str = "tiny_bert", version: str = "1") -> ModelInfo:
    spec = common_pb2.ModelSpec(
        name=name, version=version, slo_ms=100, max_batch_size=8, loaded=True, size_bytes=1_234_567
    )
    spec.inputs.add(name="input_ids", datatype="INT64", shape=[-1, -1])
    spec.outputs.add(name="pooled", datatype="FP32", shape=[-1, 32])
    return ModelInfo.from_proto(spec)


def test_table_aligns_columns_without_trailing_blanks() -> None:
    text = cli_format.format_table(("A", "LONG_HEADER"), [("xxxxx", 1), ("y", "")])
    assert text.splitlines() == ["A      LONG_HEADER", "xxxxx  1", "y"]


def test_table_rejects_ragged_rows() -> None:
    with pytest.raises(ValueError, match="expected 2"):
        cli_format.format_table(("A", "B"), [("only one",)])


@pytest.mark.parametrize(
    ("size", "text"), [(0, "0 B"), (999, "999 B"), (13_963_436, "14.0 MB"), (2 * 10**9, "2.0 GB")]
)
def test_human_bytes(size: int, text: str) -> None:
    assert cli_format.human_bytes(size) == text


def test_models_table() -> None:
    lines = cli_format.models_table([_model(), _model("mobilenet_v2", "12")]).splitlines()
    assert lines[0].split() == [
        "NAME",
        "VERSION",
        "LOADED",
        "SLO",
        "MAX_BATCH",
        "INPUTS",
        "OUTPUTS",
        "SIZE",
    ]
    assert lines[1].split() == [
        "tiny_bert",
        "1",
        "yes",
        "100",
        "ms",
        "8",
        "input_ids:INT64[?,?]",
        "pooled:FP32[?,32]",
        "1.2",
        "MB",
    ]
    assert lines[1].index("1 ") == lines[0].index("VERSION")  # columns line up
    assert cli_format.models_table([]) == "no models registered"


def test_status_text_shows_workers_instances_and_routes() -> None:
    plan, routes = sample_plan()
    instance = InstanceStatus.from_proto(
        common_pb2.QueueState(
            instance_id="tiny_bert-1-a",
            model="tiny_bert",
            version="1",
            state=common_pb2.INSTANCE_FAILED,
            queue_length=2,
            queue_capacity=64,
            served=10,
            rejected=3,
            latency_ms_mean=4.25,
            latency_ms_p99=12.0,
            error="onnxruntime: bad graph",
        )
    )
    worker = WorkerStatus("worker-0", "127.0.0.1:8200", "cpu", 2, 0.0, 100.0, False, (instance,))
    status = ClusterStatus((worker,), (_model(),), Plan.from_proto(plan, routes))
    text = cli_format.status_text(status, now=102.5)
    assert "worker-0  cpu     127.0.0.1:8200  2.5s ago" in text
    row = next(line for line in text.splitlines() if line.startswith("worker-0  tiny_bert-1-a"))
    assert row.split()[2:] == [
        "tiny_bert:1",
        "FAILED",
        "(onnxruntime:",
        "bad",
        "graph)",
        "2/64",
        "10",
        "3",
        "4.2",
        "12.0",
    ]
    assert "plan version 3 (policy first_fit, 1 instance(s)" in text
    assert "worker-0/double-1-a@127.0.0.1:8200(w=1)" in text


def test_status_text_of_an_empty_cluster() -> None:
    empty = Plan.from_proto(common_pb2.Plan(), common_pb2.RoutingTable())
    text = cli_format.status_text(ClusterStatus((), (), empty), now=0.0)
    assert text.split("\n\n") == ["no live workers", "no plan yet", "no routes"]


def test_plan_text_lists_instances_and_routes() -> None:
    plan, routes = sample_plan()
    text = cli_format.plan_text(Plan.from_proto(plan, routes))
    lines = text.splitlines()
    assert lines[0].startswith("plan version 3 (policy first_fit")
    header = next(line for line in lines if line.startswith("INSTANCE"))
    assert header.split() == [
        "INSTANCE",
        "MODEL",
        "VERSION",
        "WORKER",
        "MAX_BATCH",
        "DELAY_MS",
        "SHARE",
        "QUEUE_CAP",
        "PLANNED_RPS",
    ]
    assert any(line.split()[:4] == ["double-1-a", "double", "1", "worker-0"] for line in lines)
    assert "routes (plan version 3):" in lines
