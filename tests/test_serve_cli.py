"""quill serve's command line: numeric flags, where the API key comes from, and who may connect."""

from __future__ import annotations

from pathlib import Path

import pytest
import uvicorn

from quillgpt.cli import main
from serve_support import make_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("serve-cli") / "tiny", chat=False)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict:
    """uvicorn.run replaced: what it would have served, and where."""
    monkeypatch.delenv("QUILL_API_KEY", raising=False)
    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level, **settings:
                        seen.update(app=app, host=host, port=port, settings=settings))
    return seen


def exit_code(argv: list[str]) -> int:
    """main's return value, or the code of the SystemExit argparse raises for a usage error."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


NUMERIC_FLAGS = {  # flag: values it must refuse
    "--threads": ["0", "-1", "100000", "two", "1.5"],
    "--port": ["0", "-1", "65536", "99999999", "http"],
    "--max-batch": ["0", "-3", "10000000", "1e3"],
    "--max-queue": ["0", "-1", "10000000000", "many"],
    "--max-tokens-cap": ["0", "-1", "1000000000", "nan"],
    "--max-connections": ["0", "-1", "1000000", "lots"],
    "--request-timeout": ["0", "-1", "0.01", "nan", "inf", "5s"],
}


@pytest.mark.parametrize(("flag", "value"), [(f, v) for f, values in NUMERIC_FLAGS.items() for v in values])
def test_numeric_serve_flags_refuse_bad_values_in_one_line(run_dir: Path, served: dict, capsys: pytest.CaptureFixture,
                                                           flag: str, value: str) -> None:
    assert exit_code(["serve", str(run_dir), f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and flag in err and "Traceback" not in err, err
    assert not served  # never started


BENCH_FLAGS = {
    "--clients": ["0", "-1", "100000"],
    "--requests": ["0", "-5", "1000000000"],
    "--tokens-per-request": ["0", "-1", "1000000000"],
    "--time-limit": ["0", "-1", "nan", "inf"],
}


@pytest.mark.parametrize(("flag", "value"), [(f, v) for f, values in BENCH_FLAGS.items() for v in values])
def test_numeric_bench_serve_flags_refuse_bad_values_in_one_line(run_dir: Path, capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 flag: str, value: str) -> None:
    def never(*args: object, **kwargs: object) -> None:  # a value let through must not start a real bench
        raise AssertionError("bench_serve ran")

    monkeypatch.setattr("quillgpt.serve.load_test.bench_serve", never)
    assert exit_code(["bench", "serve", str(run_dir), f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and flag in err, err


def test_good_numeric_values_are_taken(run_dir: Path, served: dict) -> None:
    argv = ["serve", str(run_dir), "--threads", "1", "--port", "8123", "--max-batch", "4", "--max-queue", "9",
            "--max-tokens-cap", "77"]
    assert exit_code(argv) == 0
    options = served["app"].state.server.options
    assert (served["port"], options.max_batch, options.max_queue, options.max_tokens_cap) == (8123, 4, 9, 77)
    guard = served["settings"]["http"].guard  # the connection bounds uvicorn runs with: the defaults here
    assert (guard.max_connections, guard.request_timeout_s) == (128, 5.0)
    assert exit_code(["serve", str(run_dir), "--max-connections", "7", "--request-timeout", "0.5"]) == 0
    guard = served["settings"]["http"].guard
    assert (guard.max_connections, guard.request_timeout_s) == (7, 0.5) and served["settings"]["ws"] == "none"
    assert guard is served["app"].state.server.connections  # the one /health reports


def test_api_key_from_environment_or_file(run_dir: Path, served: dict, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("QUILL_API_KEY", "from-env")
    assert exit_code(["serve", str(run_dir)]) == 0
    assert served["app"].state.server.options.api_key == "from-env"
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert exit_code(["serve", str(run_dir), "--api-key-file", str(key_file)]) == 0
    assert served["app"].state.server.options.api_key == "from-file"  # the file wins over the environment
    served.clear()
    capsys.readouterr()
    assert exit_code(["serve", str(run_dir), "--api-key-file", str(key_file), "--api-key", "x"]) == 2
    key_file.write_text("\n")
    assert exit_code(["serve", str(run_dir), "--api-key-file", str(key_file)]) == 2
    assert exit_code(["serve", str(run_dir), "--api-key-file", str(tmp_path / "missing")]) == 2
    assert not served
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("quill: error:") for line in lines)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "myhost.lan"])
def test_a_network_address_needs_a_key_or_an_explicit_flag(run_dir: Path, served: dict, host: str,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    assert exit_code(["serve", str(run_dir), "--host", host]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--insecure-no-key" in err and not served
    assert exit_code(["serve", str(run_dir), "--host", host, "--insecure-no-key"]) == 0
    assert "WITHOUT an API key" in capsys.readouterr().err and served["host"] == host
    monkeypatch.setenv("QUILL_API_KEY", "k")
    assert exit_code(["serve", str(run_dir), "--host", host]) == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_needs_no_key(run_dir: Path, served: dict, host: str, capsys: pytest.CaptureFixture) -> None:
    assert exit_code(["serve", str(run_dir), "--host", host]) == 0
    assert served["app"].state.server.options.api_key is None and "warning" not in capsys.readouterr().err


def test_allowed_hosts_reach_the_app(run_dir: Path, served: dict) -> None:
    assert exit_code(["serve", str(run_dir), "--allowed-host", "a.lan", "--allowed-host", "b.lan"]) == 0
    assert served["app"].state.server.options.allowed_hosts == ("a.lan", "b.lan")
