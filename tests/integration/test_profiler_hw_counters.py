"""ProfileModel's hardware counters through the real profiler process, with a FAKE `ncu`.

There is no GPU and no Nsight Compute here. `FAKE_NCU` below is a SYNTHETIC stand-in written
into tmp_path and put first on PATH: it parses ncu's options, really runs the wrapped program
(the profiler's measuring child, which loads and runs the model), and only when that run
ended well writes a made-up report in the layout of `ncu --csv --page raw` to `--log-file`.
Its three kernels take 2, 6 and 12 us times the batch size, so the expected features are
known: kernel_num 3, mean duration 20/3 * batch us, L2 hit 71 %, L2 41 %, SM 64 %, DRAM 25 %
(time-weighted, see tests/unit/test_ncu_features.py). A file `fail` beside it makes it fail
the way a real ncu without counter permissions does.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from deinfer import profile_csv
from deinfer.protos.v1 import profiler_pb2
from tests.integration.test_profiler_service import Profiler, running_profiler

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FAKE_NCU = '''#!{python}
"""SYNTHETIC ncu for tests: runs the program, writes invented counters (no GPU involved)."""
import json, subprocess, sys
from pathlib import Path

HERE = Path(__file__).parent
VALUED = {{"--page", "--metrics", "--target-processes", "--profile-from-start",
          "--launch-skip", "--launch-count", "--log-file"}}
args, options = sys.argv[1:], {{}}
while args and args[0].startswith("--"):
    name = args.pop(0)
    options[name] = args.pop(0) if name in VALUED else ""
with (HERE / "calls.jsonl").open("a") as calls:
    calls.write(json.dumps({{"options": options, "program": args}}) + "\\n")
if (HERE / "fail").exists():
    print("==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to access "
          "NVIDIA GPU Performance Counters on the target device 0.", file=sys.stderr)
    sys.exit(1)
done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True)
sys.stdout.write("==PROF== Connected to process 4242\\n" + done.stdout)
events = [json.loads(line)["event"] for line in done.stdout.splitlines() if line.startswith("{{")]
if done.returncode != 0 or "end" not in events:
    sys.stderr.write(done.stderr)
    sys.exit(done.returncode or 1)
batch = json.loads(args[args.index("--job") + 1])["batches"][0]
head = '"ID","Kernel Name",' + ",".join(f'"{{m}}"' for m in (
    "dram__throughput.avg.pct_of_peak_sustained_elapsed", "gpu__time_duration.sum",
    "lts__t_sector_hit_rate.pct", "lts__t_sectors.avg.pct_of_peak_sustained_elapsed",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed"))
rows = [head, '"","","%","nsecond","%","%","%"',
        f'"0","implicit_convolve_sgemm","10","{{2000 * batch}}","80","20","40"',
        f'"1","cudnn::bn_fw_inf","30","{{6000 * batch}}","90","30","60"',
        f'"2","sm90_xmma_gemm","n/a","{{12000 * batch}}","60","50","70"']
Path(options["--log-file"]).write_text("\\n".join(rows) + "\\n")
'''


@pytest.fixture(scope="module")
def fake_ncu_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fake-ncu")
    script = folder / "ncu"
    script.write_text(FAKE_NCU.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.fixture(scope="module")
def with_ncu(
    tmp_path_factory: pytest.TempPathFactory,
    zoo_dir: Path,
    redis_server_bin: str,
    fake_ncu_dir: Path,
) -> Iterator[Profiler]:
    """A profiler in `auto` mode that finds the fake ncu first on its PATH."""
    env = {"PATH": f"{fake_ncu_dir}{os.pathsep}{os.environ['PATH']}"}
    tmp = tmp_path_factory.mktemp("profiler-ncu")
    with running_profiler(tmp, zoo_dir, redis_server_bin, env) as profiler:
        yield profiler


def _profile(profiler: Profiler, **fields: object) -> list[profiler_pb2.ProfileProgress]:
    request = profiler_pb2.ProfileModelRequest(model="tiny_cnn", **fields)  # type: ignore[arg-type]
    with grpc.insecure_channel(profiler.address) as channel:
        return list(profiler.stub(channel).ProfileModel(request, timeout=120))


def test_counters_per_batch_are_stored_streamed_and_exported(
    with_ncu: Profiler, fake_ncu_dir: Path
) -> None:
    messages = _profile(with_ncu, batch_sizes=[1, 2], shares=[0.5, 1.0], runs=3, warmup=1)
    fractions = [m.fraction for m in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert sum("under ncu: 3 kernels" in m.message for m in messages) == 2

    counters = messages[-1].profile.hw_counters
    assert set(counters) == {
        f"{name}@b{batch}" for name in profile_csv.HW_FIELDS for batch in (1, 2)
    }
    for batch in (1, 2):
        assert counters[f"kernel_num@b{batch}"] == 3
        assert counters[f"mean_gpu_time_duration@b{batch}"] == pytest.approx(20 / 3 * batch)
        assert counters[f"mean_l2_hit_rate@b{batch}"] == pytest.approx(71.0)
        assert counters[f"mean_l2_utilization@b{batch}"] == pytest.approx(41.0)
        assert counters[f"mean_sm_efficiency@b{batch}"] == pytest.approx(64.0)
        assert counters[f"mean_dram_utilization@b{batch}"] == pytest.approx(25.0)

    # ncu wrapped the profiler's own measuring child: one inference at the largest share.
    calls = [json.loads(line) for line in (fake_ncu_dir / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 2
    for call, batch in zip(calls, (1, 2), strict=True):
        assert call["options"]["--metrics"].startswith("gpu__time_duration.sum,")
        program = call["program"]
        assert program[:3] == [sys.executable, "-m", "services.profiler.child"]
        job = json.loads(program[program.index("--job") + 1])
        assert (job["batches"], job["runs"], job["warmup"], job["threads"]) == ([batch], 1, 0, 2)
        assert job["model_path"] == str(with_ncu.repository / "tiny_cnn/1/model.onnx")

    rows = profile_csv.read_rows(with_ncu.export_dir / "cpu" / "profiles.csv")
    assert len(rows) == 4  # 2 batches x 2 shares
    for row in rows:
        batch = int(row["batch"])
        assert row["kernel_num"] == "3"
        assert float(row["mean_gpu_time_duration"]) == pytest.approx(20 / 3 * batch, abs=1e-6)
        assert float(row["mean_sm_efficiency"]) == pytest.approx(64.0)


def test_a_failing_ncu_leaves_counters_out_in_auto_mode(
    with_ncu: Profiler, fake_ncu_dir: Path
) -> None:
    (fake_ncu_dir / "fail").touch()
    try:
        messages = _profile(with_ncu, batch_sizes=[4], shares=[0.5], runs=2)
    finally:
        (fake_ncu_dir / "fail").unlink()
    final = messages[-1]
    assert final.fraction == 1.0 and len(final.profile.points) == 1
    assert not final.profile.hw_counters
    failed = [m.message for m in messages if "hardware counters of tiny_cnn/1" in m.message]
    assert len(failed) == 1 and "ERR_NVGPUCTRPERM" in failed[0]
    assert "profiling without hardware counters" in failed[0]
    exported = profile_csv.read_rows(with_ncu.export_dir / "cpu" / "profiles.csv")
    assert [(r["batch"], r["kernel_num"]) for r in exported if r["batch"] == "4"] == [("4", "")]


def test_required_without_ncu_is_a_failed_precondition(
    tmp_path: Path, zoo_dir: Path, redis_server_bin: str
) -> None:
    path = os.pathsep.join(
        folder
        for folder in os.environ["PATH"].split(os.pathsep)
        if not (Path(folder) / "ncu").exists()
    )
    env = {"PATH": path, "DEINFER_PROFILER_HW_COUNTERS": "required"}
    with running_profiler(tmp_path, zoo_dir, redis_server_bin, env) as profiler:
        with pytest.raises(grpc.RpcError) as err:
            _profile(profiler, batch_sizes=[1], shares=[0.5], runs=2)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Nsight Compute (ncu) is not on the profiler's PATH" in str(err.value.details())
        # The refusal happens before anything is measured or stored, and the service stays up.
        assert not (profiler.export_dir / "cpu" / "profiles.csv").exists()
        with pytest.raises(grpc.RpcError) as again:
            _profile(profiler, batch_sizes=[1], shares=[0.5], runs=2)
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.skipif(shutil.which("ncu") is not None, reason="a real ncu is on PATH")
def test_auto_without_ncu_profiles_without_counters(
    tmp_path: Path, zoo_dir: Path, redis_server_bin: str
) -> None:
    with running_profiler(tmp_path, zoo_dir, redis_server_bin) as profiler:
        messages = _profile(profiler, batch_sizes=[1], shares=[1.0], runs=2)
    assert any("not on PATH: profiling without hardware counters" in m.message for m in messages)
    assert messages[-1].profile.points and not messages[-1].profile.hw_counters
    rows = profile_csv.read_rows(profiler.export_dir / "cpu" / "profiles.csv")
    assert [r["kernel_num"] for r in rows] == [""]
