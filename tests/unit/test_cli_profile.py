"""`deinfer profile`: member parsing, the progress bar, tables and usage errors."""

from __future__ import annotations

import io

import pytest

from deinfer import cli, cli_profile
from deinfer.protos.v1 import profiler_pb2


def test_members_take_defaults_and_versions() -> None:
    m = cli_profile.parse_member("resnet18", batch=2, share=0.5)
    assert (m.model, m.version, m.batch, m.share) == ("resnet18", "", 2, 0.5)
    m = cli_profile.parse_member("bert/3:4:1.0", batch=1, share=0.5)
    assert (m.model, m.version, m.batch, m.share) == ("bert", "3", 4, 1.0)
    m = cli_profile.parse_member("a:8", batch=1, share=0.25)
    assert (m.batch, m.share) == (8, 0.25)


@pytest.mark.parametrize("text", ["", ":1", "a:b", "a:1:x", "a:1:0.5:9"])
def test_bad_members(text: str) -> None:
    with pytest.raises(ValueError, match="MODEL"):
        cli_profile.parse_member(text, 1, 0.5)


def test_progress_bar_and_plain_lines() -> None:
    half = profiler_pb2.ProfileProgress(fraction=0.5, message="batch 4")
    assert cli_profile.progress_line(half, width=10) == "[#####.....]  50% batch 4"
    out = io.StringIO()  # not a terminal: one line per message
    done = profiler_pb2.ProfileProgress(fraction=1.0, message="done")
    last = cli_profile.follow([half, done], out)
    assert last is done
    assert out.getvalue().splitlines() == [
        "[###############...............]  50% batch 4",
        "[##############################] 100% done",
    ]
    with pytest.raises(RuntimeError, match="without a result"):
        cli_profile.follow([], io.StringIO())


def test_tables_show_every_point_and_member() -> None:
    profile = profiler_pb2.ModelProfile(
        model="m",
        version="1",
        device_type="cpu",
        points=[
            profiler_pb2.ProfilePoint(batch=4, share=1.0, threads=2, mean_ms=12.5, runs=3),
            profiler_pb2.ProfilePoint(batch=1, share=0.5, threads=1, mean_ms=3.25, runs=3),
        ],
        static_features=profiler_pb2.StaticFeatures(flops=3.6e9, params=11_000_000),
    )
    lines = cli_profile.profile_table(profile).splitlines()
    assert "3.600 GFLOPs" in lines[0] and "11.00 M params" in lines[0]
    assert lines[2].split()[:4] == ["1", "0.5", "1", "3.250"]
    assert lines[3].split()[:4] == ["4", "1", "2", "12.500"]
    row = profiler_pb2.ColocationRow(
        members=[profiler_pb2.ColocationMember(model="a", version="1", batch=2, share=0.5)],
        solo_points=[profiler_pb2.ProfilePoint(mean_ms=10.0)],
        points=[profiler_pb2.ProfilePoint(mean_ms=12.0, p99_ms=15.0)],
        slowdown=[0.2],
    )
    assert cli_profile.colocation_table(row).splitlines()[2].split()[-2:] == ["+20.0", "%"]


@pytest.mark.parametrize(
    "argv",
    [
        ["profile", "colocate", "a"],
        ["profile", "colocate", "a", "b", "c", "d"],
        ["profile", "a", "b"],
        ["profile", "colocate", "a:x", "b"],
    ],
)
def test_usage_errors_exit_2_without_calling_the_service(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*argv, "--profiler", "127.0.0.1:1"]) == 2
    assert "error:" in capsys.readouterr().err
