"""`deinfer` argument parsing, output and exit codes, against a real in-test gRPC server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from deinfer import cli
from tests.conftest import free_port
from tests.unit.test_sdk_client import FakeServer, sdk_server  # noqa: F401  (fixture)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_addresses_come_from_flags_then_env_then_defaults() -> None:
    parser = cli.build_parser(env={}, load_zoo=False)
    args = parser.parse_args(["status"])
    assert (args.url, args.controller) == ("127.0.0.1:8001", "127.0.0.1:8100")
    env = {"DEINFER_URL": "gpu1:9001", "DEINFER_CONTROLLER_URL": "gpu1:9100"}
    args = cli.build_parser(env=env, load_zoo=False).parse_args(["plan"])
    assert (args.url, args.controller) == ("gpu1:9001", "gpu1:9100")
    args = cli.build_parser(env=env, load_zoo=False).parse_args(["--url", "x:1", "plan"])
    assert (args.url, args.controller) == ("x:1", "gpu1:9100")


def test_register_arguments() -> None:
    args = cli.build_parser(env={}, load_zoo=False).parse_args(
        ["models", "register", "bert", "b.onnx", "--slo-ms", "25.5", "--max-batch-size", "16"]
    )
    assert (args.name, args.path, args.slo_ms, args.max_batch_size) == (
        "bert",
        "b.onnx",
        25.5,
        16,
    )
    assert args.func is cli.run_register


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["models"],
        ["models", "register", "m", "m.onnx"],  # --slo-ms is required
        ["models", "register", "m", "m.onnx", "--slo-ms", "fast"],
        ["up", "--workers", "0"],
        ["up", "--port", "70000"],
        ["bogus"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_up_arguments() -> None:
    args = cli.build_parser(env={}, load_zoo=False).parse_args(["up"])
    assert (args.workers, args.no_examples, args.port, args.state_dir, args.redis_url) == (
        2,
        False,
        8001,
        Path(".deinfer"),
        None,
    )
    args = cli.build_parser(env={}, load_zoo=False).parse_args(
        ["up", "--workers", "3", "--no-examples", "--port", "9001", "--state-dir", "/s"]
    )
    assert (args.workers, args.no_examples, args.port, args.state_dir) == (
        3,
        True,
        9001,
        Path("/s"),
    )


def test_models_commands(
    sdk_server: FakeServer,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x" * 3000)
    flags = ["--url", sdk_server.url, "--controller", sdk_server.url]

    register = ["models", "register", "double", str(model), "--slo-ms", "50"]
    code, out, _ = _run(capsys, *flags, *register)
    assert code == 0
    assert out.splitlines()[0] == "registered double version 1"

    code, out, _ = _run(capsys, *flags, "models", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "VERSION", "LOADED", "SLO"]
    expected = ["double", "1", "yes", "50", "ms", "8", "x:FP32[?,4]", "-", "3.0", "KB"]
    assert lines[1].split() == expected

    code, out, _ = _run(capsys, *flags, "models", "remove", "double", "--version", "1")
    assert (code, out.strip()) == (0, "removed double version(s) 1")
    code, out, _ = _run(capsys, *flags, "models", "list")
    assert out.strip() == "no models registered"


def test_status_and_plan(sdk_server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    flags = ["--url", sdk_server.url, "--controller", sdk_server.url]
    code, out, _ = _run(capsys, *flags, "status")
    assert code == 0
    assert "worker-0  cpu" in out and "127.0.0.1:8200" in out
    assert "double-1-a" in out and "READY" in out and "3/64" in out
    assert "plan version 3" in out
    code, out, _ = _run(capsys, *flags, "plan")
    assert code == 0 and out.startswith("plan version 3 (policy first_fit")


def test_server_errors_print_code_and_message(
    sdk_server: FakeServer,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flags = ["--controller", sdk_server.url]
    code, out, err = _run(capsys, *flags, "models", "remove", "ghost")
    assert (code, out) == (1, "")
    assert err.strip() == "error: NOT_FOUND: model 'ghost' is not registered"

    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    code, _, err = _run(capsys, *flags, "models", "register", "m", str(model), "--slo-ms", "-1")
    assert code == 1 and err.startswith("error: INVALID_ARGUMENT: slo_ms must be > 0")

    code, _, err = _run(capsys, *flags, "models", "register", "m", "/no/such.onnx", "--slo-ms", "5")
    assert code == 1 and err.strip() == "error: no such model file: /no/such.onnx"


def test_unreachable_controller_hints_at_deinfer_up(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    code, _, err = _run(capsys, "--controller", dead, "--timeout", "5", "models", "list")
    assert code == 1
    first, hint = err.strip().splitlines()
    assert first.startswith("error: UNAVAILABLE: ")
    assert "deinfer up" in hint and dead in hint


def test_zoo_subcommand_is_wired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "zoo", "list")
    assert code == 0 and "tiny_cnn" in out
    code, out, _ = _run(capsys, "zoo", "build", "tiny_cnn", "--out", str(tmp_path))
    assert code == 0 and (tmp_path / "tiny_cnn.onnx").is_file()


def test_console_script(sdk_server: FakeServer) -> None:  # noqa: F811
    exe = shutil.which("deinfer")
    if exe is None:
        pytest.skip("the deinfer console script is not installed (pip install -e .)")
    result = subprocess.run(
        [exe, "--controller", sdk_server.url, "plan"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("plan version 3")
