"""The dispatcher's smaller pieces: statistics, Triton views, repository parameters, rate
tracking, the wire scan, stream framing, the in-flight limit and settings."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.v1 import common_pb2
from services.dispatcher.catalog import Snapshot
from services.dispatcher.errors import RequestError, invalid_argument
from services.dispatcher.forwarder import WorkerTimes
from services.dispatcher.rates import RateTracker
from services.dispatcher.repository import CHUNK_BYTES, LoadRequest, _upload, parse_load
from services.dispatcher.servicer import InflightLimit, stream_error, stream_ok
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.statistics import Statistics
from services.dispatcher.views import config_dims, model_config, model_metadata, repository_index
from services.dispatcher.wire import WireError, split_raw_contents

SPEC = common_pb2.ModelSpec(
    name="cnn",
    version="2",
    platform="onnxruntime_onnx",
    inputs=[common_pb2.TensorSpec(name="input", datatype="FP32", shape=[-1, 3, 8, 8])],
    outputs=[common_pb2.TensorSpec(name="out", datatype="INT64", shape=[-1, 10])],
    slo_ms=25.5,
    max_batch_size=16,
    loaded=True,
    sha256="cafe",
)


def _snapshot() -> Snapshot:
    v1 = common_pb2.ModelSpec()
    v1.CopyFrom(SPEC)
    v1.version = "1"
    v1.loaded = False
    plan = common_pb2.Plan(version=9)
    for i, delay in enumerate((1.5, 4.0)):
        plan.instances.add(
            instance_id=f"i{i}", model="cnn", version="2", max_batch_size=8 * (i + 1),
            max_delay_ms=delay,
        )  # fmt: skip
    table = common_pb2.RoutingTable(plan_version=9)
    table.models.add(model="cnn", version="2").routes.add(instance_id="i0", address="a:1")
    return Snapshot.build([v1, SPEC], table, plan)


# --- statistics -------------------------------------------------------------------------------


def test_statistics_from_real_counters() -> None:
    stats = Statistics(wall_ms=lambda: 1234)
    stats.record_success("cnn", "2", 1000, rows=2, times=WorkerTimes(10, 20, batch_size=4))
    stats.record_success("cnn", "2", 3000, rows=2, times=WorkerTimes(30, 40, batch_size=4))
    stats.record_success("cnn", "2", 500, rows=3, times=WorkerTimes())  # no trailing metadata
    stats.record_failure("cnn", "2", 700)
    proto = stats.model_statistics(SPEC)
    assert (proto.name, proto.version, proto.last_inference) == ("cnn", "2", 1234)
    assert proto.inference_count == 7
    assert proto.execution_count == 2  # 2/4 + 2/4 + 3/3
    s = proto.inference_stats
    assert (s.success.count, s.success.ns) == (3, 4500)
    assert (s.fail.count, s.fail.ns) == (1, 700)
    assert (s.queue.count, s.queue.ns) == (3, 40)
    assert (s.compute_infer.count, s.compute_infer.ns) == (3, 60)


def test_statistics_of_an_idle_model_are_zero() -> None:
    response = Statistics().response([SPEC])
    assert len(response.model_stats) == 1
    assert response.model_stats[0].inference_count == 0
    assert response.model_stats[0].inference_stats.success.count == 0


# --- views ------------------------------------------------------------------------------------


def test_model_metadata_keeps_the_batch_dimension() -> None:
    meta = model_metadata(_snapshot(), SPEC)
    assert meta.name == "cnn" and list(meta.versions) == ["1", "2"]
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 3, 8, 8])
    ]
    assert [(t.name, t.datatype) for t in meta.outputs] == [("out", "INT64")]


def test_model_config_follows_triton_semantics() -> None:
    config = model_config(_snapshot(), SPEC).config
    as_json = MessageToDict(config, preserving_proto_field_name=True)
    assert as_json["platform"] == "onnxruntime_onnx" and as_json["backend"] == "onnxruntime"
    assert as_json["max_batch_size"] == 16
    assert as_json["input"][0] == {
        "name": "input",
        "data_type": "TYPE_FP32",
        "dims": ["3", "8", "8"],
    }
    assert as_json["output"][0]["data_type"] == "TYPE_INT64"
    assert as_json["dynamic_batching"] == {
        "preferred_batch_size": [8, 16],
        "max_queue_delay_microseconds": "4000",
    }
    assert as_json["instance_group"][0]["count"] == 2
    params = {k: v["string_value"] for k, v in as_json["parameters"].items()}
    assert params["slo_ms"] == "25.5" and params["plan_version"] == "9"
    assert params["sha256"] == "cafe" and params["loaded"] == "true"


def test_config_dims_without_batching_keep_every_dimension() -> None:
    assert config_dims([-1, 3, 8], 4) == [3, 8]
    assert config_dims([2, 3, 8], 0) == [2, 3, 8]


def test_repository_index_states_and_reasons() -> None:
    snap = _snapshot()
    index = repository_index(snap, snap.all_specs(), ready_only=False)
    assert [(m.name, m.version, m.state, m.reason) for m in index.models] == [
        ("cnn", "1", "UNAVAILABLE", "version 1 is unloaded"),
        ("cnn", "2", "READY", ""),
    ]
    ready = repository_index(snap, snap.all_specs(), ready_only=True)
    assert [m.version for m in ready.models] == ["2"]


# --- repository parameters -------------------------------------------------------------------


ONNX = "file:1/model.onnx"


def _params(values: dict[str, object]) -> dict[str, pb.ModelRepositoryParameter]:
    out = {}
    for key, value in values.items():
        p = pb.ModelRepositoryParameter()
        if isinstance(value, bytes):
            p.bytes_param = value
        elif isinstance(value, int):
            p.int64_param = value
        else:
            p.string_param = str(value)
        out[key] = p
    return out


def test_plain_load_needs_no_slo() -> None:
    assert parse_load("m", {}) == LoadRequest(name="m")


def test_upload_with_slo_from_config() -> None:
    config = json.dumps({"max_batch_size": 4, "parameters": {"slo_ms": {"string_value": "40"}}})
    load = parse_load("m", _params({"config": config, ONNX: b"x"}))
    assert load == LoadRequest("m", b"x", 40.0, 4)


def test_upload_with_plain_slo_parameter() -> None:
    assert parse_load("m", _params({"slo_ms": "12.5", ONNX: b"x"})).slo_ms == 12.5
    assert parse_load("m", _params({"slo_ms": 30, ONNX: b"x"})).slo_ms == 30.0


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({ONNX: b"x"}, ["needs an SLO"]),
        ({"config": "{not json", ONNX: b"x"}, ["not valid JSON"]),
        ({"config": "[1]"}, ["JSON object"]),
        ({"slo_ms": "fast", ONNX: b"x"}, ["number of milliseconds"]),
        ({"slo_ms": "-3", ONNX: b"x"}, ["> 0"]),
        ({"config": json.dumps({"max_batch_size": -1})}, ["max_batch_size must be >= 0"]),
        ({ONNX: "text"}, ["must carry bytes"]),
        ({"slo_ms": "5", "file:config.pbtxt": b"x"}, ["only an ONNX file", "config.pbtxt"]),
        (
            {"slo_ms": "5", "file:1/a.onnx": b"x", "file:1/b.onnx": b"y"},
            ["one ONNX file at a time"],
        ),
    ],
)
def test_bad_load_parameters(params: dict[str, object], words: list[str]) -> None:
    with pytest.raises(RequestError) as err:
        parse_load("m", _params(params))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    for word in words:
        assert word in err.value.message


def test_empty_model_name_is_refused() -> None:
    with pytest.raises(RequestError) as err:
        parse_load("", {})
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_upload_streams_header_then_chunks() -> None:
    data = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 1)  # two chunks and a bit

    async def collect() -> list[object]:
        return [m async for m in _upload(LoadRequest("m", data, 20.0, 2))]

    messages = asyncio.run(collect())
    assert len(messages) == 3
    first = messages[0]
    assert (first.name, first.slo_ms, first.max_batch_size) == ("m", 20.0, 2)  # type: ignore[attr-defined]
    assert b"".join(m.chunk for m in messages) == data  # type: ignore[attr-defined]


# --- rates ------------------------------------------------------------------------------------


def test_rate_tracker_reports_and_detects_changes_continuously() -> None:
    rates = RateTracker()
    for _ in range(10):
        rates.record("m")
    first = rates.close_window(1.0)
    assert [(r.model, r.rate, r.change_detected) for r in first] == [("m", 10.0, True)]
    # Steady traffic: no alarm, the estimate stays put.
    for _ in range(5):
        for _ in range(10):
            rates.record("m")
        (steady,) = rates.close_window(1.0)
        assert not steady.change_detected and steady.rate == pytest.approx(10.0)
    # A jump to 100/s is detected (quickly) and re-estimated...
    alarms = []
    for _ in range(3):
        for _ in range(100):
            rates.record("m")
        alarms.append(rates.close_window(1.0)[0])
    assert alarms[0].change_detected and alarms[0].rate == pytest.approx(100.0)
    assert not alarms[1].change_detected and not alarms[2].change_detected
    # ...and a later drop is detected too: detection does not stop after one alarm.
    (drop,) = rates.close_window(1.0)
    assert drop.change_detected and drop.rate == 0.0


def test_idle_model_is_forgotten() -> None:
    rates = RateTracker()
    rates.record("m")
    rates.close_window(1.0)
    # One request a second then silence: a few quiet seconds are not yet significant...
    history = [rates.close_window(1.0) for _ in range(40)]
    assert history[0][0].rate > 0 and not history[0][0].change_detected
    # ...but the rate is eventually reported as 0 once, then the model is forgotten.
    reported = [r for r in history if r]
    assert reported[-1][0].rate == 0.0
    assert history[-1] == []


# --- wire scan and stream framing -----------------------------------------------------------


def test_wire_scan_splits_out_raw_contents() -> None:
    req = pb.ModelInferRequest(model_name="m", id="7")
    req.inputs.add(name="a", datatype="FP32", shape=[1])
    req.raw_input_contents.append(b"\1\2\3\4")
    req.raw_input_contents.append(b"")
    req.outputs.add(name="o")
    header, sizes = split_raw_contents(req.SerializeToString())
    assert sizes == [4, 0]
    parsed = pb.ModelInferRequest.FromString(header)
    assert (parsed.model_name, parsed.id, len(parsed.raw_input_contents)) == ("m", "7", 0)
    assert parsed.outputs[0].name == "o"


@pytest.mark.parametrize(
    "data", [b"\x0a\x05ab", b"\x80", b"\x00\x01", b"\x0b", b"\x3a\xff\xff\xff\xff\x0f"]
)
def test_wire_scan_refuses_malformed_bytes(data: bytes) -> None:
    with pytest.raises(WireError):
        split_raw_contents(data)


def test_stream_ok_wraps_the_worker_bytes_without_parsing() -> None:
    response = pb.ModelInferResponse(model_name="m", id="r1")
    response.raw_output_contents.append(b"\0" * 300)  # a multi-byte length
    framed = pb.ModelStreamInferResponse.FromString(stream_ok(response.SerializeToString()))
    assert framed.error_message == "" and framed.infer_response == response


def test_stream_error_names_status_and_request() -> None:
    raw = pb.ModelInferRequest(model_name="m", model_version="1", id="r9").SerializeToString()
    framed = pb.ModelStreamInferResponse.FromString(
        stream_error(invalid_argument("input 'x' is wrong"), raw)
    )
    assert framed.error_message == "INVALID_ARGUMENT: input 'x' is wrong"
    assert (framed.infer_response.id, framed.infer_response.model_name) == ("r9", "m")
    garbled = pb.ModelStreamInferResponse.FromString(
        stream_error(invalid_argument("cannot parse"), b"\xff\xff")
    )
    assert garbled.error_message == "INVALID_ARGUMENT: cannot parse"


def test_inflight_limit() -> None:
    limit = InflightLimit(2)
    assert limit.try_enter() and limit.try_enter()
    assert not limit.try_enter()
    assert limit.refusal().code == grpc.StatusCode.RESOURCE_EXHAUSTED
    limit.exit()
    assert limit.try_enter()


def test_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = DispatcherSettings()
    assert (settings.dispatcher_port, settings.dispatcher_metrics_port) == (8001, 8002)
    assert settings.dispatcher_host == "0.0.0.0"
    assert settings.dispatcher_controller_address == "127.0.0.1:8100"
    assert settings.dispatcher_max_inflight == 4096
    assert settings.dispatcher_refresh_s == 2.0
    assert settings.dispatcher_server_name == "deinfer"
    assert "-" in settings.dispatcher_id
    monkeypatch.setenv("DEINFER_DISPATCHER_MAX_INFLIGHT", "7")
    monkeypatch.setenv("DEINFER_DISPATCHER_ID", "d-1")
    settings = DispatcherSettings()
    assert (settings.dispatcher_max_inflight, settings.dispatcher_id) == (7, "d-1")
