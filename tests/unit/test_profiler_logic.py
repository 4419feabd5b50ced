"""The profiler's pure parts: statistics, the co-location window, share -> threads and cores,
request checks, merging stored points, and the CSV schema rows."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from deinfer import profile_csv
from deinfer.protos.v1 import profiler_pb2
from services.profiler.errors import ProfilerError
from services.profiler.profiling import measured_point, merge_points
from services.profiler.requests import (
    Limits,
    check_colocation_request,
    check_model_request,
    parse_list,
)
from services.profiler.shares import assign_cores, threads_for_share
from services.profiler.stats import overlap_window, runs_inside, slowdown, summarize

LIMITS = Limits(
    max_batch=64,
    max_runs=100,
    default_batches=(1, 2),
    default_shares=(0.5, 1.0),
    default_sequence_length=128,
)


def test_summary_of_known_values() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0, 10.0])
    assert s.mean_ms == 4.0
    assert s.p50_ms == 3.0
    # numpy's linear interpolation: 4 + 0.96 * (10 - 4).
    assert s.p99_ms == pytest.approx(9.76)
    assert s.std_ms == pytest.approx((sum((x - 4) ** 2 for x in [1, 2, 3, 4, 10]) / 4) ** 0.5)
    assert s.runs == 5
    assert summarize([7.0]).std_ms == 0.0
    with pytest.raises(ValueError, match="no timed runs"):
        summarize([])


def test_only_runs_inside_the_common_window_count_as_colocated() -> None:
    a = [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
    b = [(0.5, 2.5), (2.5, 3.5)]  # started later, stopped earlier
    window = overlap_window([a, b])
    assert window == (0.5, 3.5)
    assert runs_inside(a, window) == [1000.0, 1000.0]  # (1,2) and (2,3) only
    assert runs_inside(b, window) == [2000.0, 1000.0]
    # Members that reported when they started: the window opens then.
    assert overlap_window([a, b], start=1.0) == (1.0, 3.5)
    with pytest.raises(ValueError, match="at least one run"):
        overlap_window([a, []])


def test_slowdown() -> None:
    assert slowdown(15.0, 10.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive"):
        slowdown(1.0, 0.0)


@pytest.mark.parametrize(
    ("share", "threads", "expected"),
    [(1.0, 2, 2), (0.5, 2, 1), (0.1, 2, 1), (0.5, 16, 8), (0.25, 6, 2), (1.0, 1, 1)],
)
def test_share_maps_to_threads_like_the_worker(share: float, threads: int, expected: int) -> None:
    assert threads_for_share(share, threads) == expected


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_share_out_of_range_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        threads_for_share(share, 4)


def test_cores_are_consecutive_and_wrap_when_oversubscribed() -> None:
    assert assign_cores([1, 1], [0, 1]) == [[0], [1]]
    assert assign_cores([2, 1], [0, 1]) == [[0, 1], [0]]
    assert assign_cores([2, 2, 1], [4, 5, 6, 7]) == [[4, 5], [6, 7], [4]]
    assert assign_cores([8], [0, 1]) == [[0, 1]]
    with pytest.raises(ValueError, match="no cores"):
        assign_cores([1], [])


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(ProfilerError) as err:
        call()  # type: ignore[operator]
    return err.value.code


def test_model_request_defaults_and_deduplication() -> None:
    plan = check_model_request(
        profiler_pb2.ProfileModelRequest(
            model="m", batch_sizes=[4, 1, 4], shares=[1.0, 0.5], runs=3
        ),
        LIMITS,
    )
    assert (plan.batches, plan.shares, plan.runs, plan.warmup) == ([1, 4], [0.5, 1.0], 3, 0)
    assert plan.sequence_length == 128
    defaults = check_model_request(profiler_pb2.ProfileModelRequest(model="m", runs=1), LIMITS)
    assert (defaults.batches, defaults.shares) == ([1, 2], [0.5, 1.0])


@pytest.mark.parametrize(
    "fields",
    [
        {"model": "", "runs": 1},
        {"model": "m", "runs": 0},
        {"model": "m", "runs": -1},
        {"model": "m", "runs": 101},
        {"model": "m", "runs": 1, "warmup": -1},
        {"model": "m", "runs": 1, "batch_sizes": [0]},
        {"model": "m", "runs": 1, "batch_sizes": [65]},
        {"model": "m", "runs": 1, "shares": [0.0]},
        {"model": "m", "runs": 1, "shares": [1.01]},
        {"model": "m", "runs": 1, "shares": [float("nan")]},
        {"model": "m", "runs": 1, "sequence_length": -1},
    ],
)
def test_bad_model_requests_are_invalid_arguments(fields: dict[str, object]) -> None:
    request = profiler_pb2.ProfileModelRequest(**fields)  # type: ignore[arg-type]
    assert _code(lambda: check_model_request(request, LIMITS)) == grpc.StatusCode.INVALID_ARGUMENT


def _member(model: str = "m", batch: int = 1, share: float = 0.5) -> profiler_pb2.ColocationMember:
    return profiler_pb2.ColocationMember(model=model, batch=batch, share=share)


@pytest.mark.parametrize(
    "members",
    [
        [],
        [_member()],
        [_member()] * 4,
        [_member(), _member(model="")],
        [_member(), _member(batch=0)],
        [_member(), _member(share=0.0)],
        [_member(), _member(share=2.0)],
    ],
)
def test_bad_colocation_requests_are_invalid_arguments(
    members: list[profiler_pb2.ColocationMember],
) -> None:
    request = profiler_pb2.ProfileColocationRequest(members=members, runs=5)
    code = _code(lambda: check_colocation_request(request, LIMITS))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_colocation_request_of_three_is_accepted() -> None:
    request = profiler_pb2.ProfileColocationRequest(members=[_member()] * 3, runs=5, warmup=2)
    members, runs, warmup, sequence_length = check_colocation_request(request, LIMITS)
    assert (len(members), runs, warmup, sequence_length) == (3, 5, 2, 128)


def test_parse_list() -> None:
    assert parse_list("1, 4,16", int) == (1, 4, 16)
    assert parse_list("0.5,1.0,", float) == (0.5, 1.0)


def test_new_points_replace_old_ones_at_the_same_configuration() -> None:
    old = [measured_point(1, 0.5, 1, [5.0]), measured_point(2, 0.5, 1, [9.0])]
    new = [measured_point(1, 0.5, 1, [4.0]), measured_point(1, 1.0, 2, [3.0])]
    merged = merge_points(old, new)
    assert [(p.batch, p.share, p.mean_ms) for p in merged] == [
        (1, 0.5, 4.0),
        (1, 1.0, 3.0),
        (2, 0.5, 9.0),
    ]


def _profile() -> profiler_pb2.ModelProfile:
    return profiler_pb2.ModelProfile(
        model="resnet18",
        version="2",
        device_type="cpu",
        device_name="test cpu",
        device_threads=2,
        sequence_length=128,
        measured_at=1_700_000_000.25,
        points=[measured_point(4, 1.0, 2, [10.0, 12.0]), measured_point(1, 0.5, 1, [3.0])],
        static_features=profiler_pb2.StaticFeatures(flops=3.6e9, macs=1.8e9, params=11, depth=5),
    )


def _row() -> profiler_pb2.ColocationRow:
    return profiler_pb2.ColocationRow(
        members=[
            profiler_pb2.ColocationMember(model="a", version="1", batch=2, share=0.5, threads=1),
            profiler_pb2.ColocationMember(model="b", version="3", batch=1, share=1.0, threads=2),
        ],
        latency_ms=[12.0, 30.0],
        solo_latency_ms=[10.0, 20.0],
        slowdown=[0.2, 0.5],
        device_type="cpu",
        points=[measured_point(2, 0.5, 1, [12.0]), measured_point(1, 1.0, 2, [30.0])],
        solo_points=[measured_point(2, 0.5, 1, [10.0]), measured_point(1, 1.0, 2, [20.0])],
        device_threads=2,
        sequence_length=128,
        measured_at=1_700_000_000.0,
        experiment_id="x1",
        static_features=[
            profiler_pb2.StaticFeatures(flops=1e9, depth=3),
            profiler_pb2.StaticFeatures(flops=2e9, depth=4),
        ],
    )


def test_solo_rows_follow_the_schema() -> None:
    rows = profile_csv.solo_rows(_profile())
    assert all(list(r) == profile_csv.FIELDS for r in rows)
    first, second = rows  # ordered by (share, batch)
    assert (first["batch"], first["share"], first["threads"]) == (1, 0.5, 1)
    assert (second["mean_ms"], second["solo_mean_ms"], second["slowdown"]) == (11.0, 11.0, 0.0)
    assert second["corunners"] == 0 and second["corunner_models"] == ""
    assert second["flops"] == 3.6e9 and second["device_type"] == "cpu"


def test_colocation_rows_list_the_other_members_as_corunners() -> None:
    a, b = profile_csv.colocation_rows(_row())
    assert list(a) == profile_csv.FIELDS
    assert (a["model"], a["version"], a["corunners"], a["corunner_models"]) == ("a", "1", 1, "b/3")
    assert (a["corunner_batches"], a["corunner_shares"], a["corunner_threads"]) == ("1", "1.0", "2")
    assert a["corunner_solo_ms"] == "20.0" and a["corunner_flops"] == "2000000000.0"
    assert (a["mean_ms"], a["solo_mean_ms"], a["slowdown"]) == (12.0, 10.0, 0.2)
    assert (b["corunner_models"], b["slowdown"], b["depth"]) == ("a/1", 0.5, 4)
    assert a["experiment_id"] == b["experiment_id"] == "x1"


def test_csv_round_trip_and_append_checks_the_header(tmp_path: Path) -> None:
    path = tmp_path / "out" / "profiles.csv"
    profile_csv.write_rows(path, profile_csv.solo_rows(_profile()))
    profile_csv.write_rows(path, profile_csv.colocation_rows(_row()), append=True)
    rows = profile_csv.read_rows(path)
    assert [r["kind"] for r in rows] == ["solo", "solo", "colocation", "colocation"]
    assert rows[0]["measured_at"] == "1700000000.25"  # timestamps keep their digits
    assert rows[2]["corunner_models"] == "b/3"
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="other columns"):
        profile_csv.write_rows(other, [], append=True)
    with pytest.raises(ValueError, match="schema"):
        profile_csv.read_rows(other)
