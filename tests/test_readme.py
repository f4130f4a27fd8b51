"""README.md runs as written, in order, in a fresh folder: a README command that does not run fails here.

Every code block whose lines are commands (``quill ...``, ``make ...``, ``QUILL_API_KEY=... quill ...``)
and every ```python block runs in README order, with ``quill`` defined as this interpreter's
``python -m quillgpt``. Later commands find what earlier ones wrote (runs/cpu-small, runs/cpu-small-sft,
...), exactly as a reader following the page would.

What is changed is only the *size* of the work, by the rules in ``SCALE`` below, each with its
reason; every rewritten command is printed with its original. Nothing else is rewritten:
paths, run names, flags and the order are the README's own.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
COMMAND = re.compile(r"^(quill |make |[A-Z_]+=\S* quill )")
COMMENT = re.compile(r"\s+#\s.*$")  # the README's end-of-line comments: two spaces, '#', a space

TRAIN_SMALL = "--max-iters 3 --eval-iters 2 --eval-interval 3 --batch-size 4 --sample-chars 20 --no-progress"


@dataclass
class Rule:
    pattern: str  # applies to commands this regex finds
    why: str
    append: str = ""  # flags added at the end (argparse: the last value of a flag wins)
    replace: tuple[tuple[str, str], ...] = ()
    codes: tuple[int, ...] = (0,)  # exit codes that mean the command worked
    stdin: str = ""
    env: dict[str, str] = field(default_factory=dict)


# The size of the work, and nothing else. First matching rule wins.
SCALE = [
    Rule(r"^make (demo|test)\b", "the two setup commands: .ci/run runs both literally on a clean clone"),
    Rule(r"^quill train --resume", "continue the 3-step run for 2 more steps", append="--max-iters 5"),
    Rule(r"^quill train .*--device cuda", "no GPU here: the same command on the CPU, without compiling",
         replace=(("--device cuda", "--device cpu"), (" --compile", "")), append=TRAIN_SMALL),
    Rule(r"^quill train .*--preset (add3|mul2|calc3)", "3 steps, and 50 held-out problems at the end",
         append=f"{TRAIN_SMALL} --eval-examples 50"),
    Rule(r"^quill train\b", "3 steps instead of thousands", append=TRAIN_SMALL),
    Rule(r"^quill sft\b", "3 steps", append=TRAIN_SMALL),
    Rule(r"^quill chat\b", "one question on stdin", stdin="What is 2 plus 3?\n"),
    Rule(r"^quill reward train\b", "2 steps", append="--steps 2 --eval-interval 1 --val-pairs 20 --batch-size 4 "
                                                     "--no-progress"),
    Rule(r"^quill rl\b", "1 step of 2 questions x 2 samples",
         append="--steps 1 --prompts-per-step 2 --samples-per-prompt 2 --minibatches 1 --eval-interval 1 "
                "--eval-questions 10 --no-progress"),
    Rule(r"^quill rft\b", "1 round of 4 questions x 2 samples, 2 SFT steps",
         append="--rounds 1 --questions 4 --samples 2 --sft-steps 2 --batch-size 4 --eval-questions 10 --no-progress"),
    Rule(r"^quill dpo\b", "2 steps", append="--steps 2 --batch-size 4 --val-pairs 20 --eval-interval 1 "
                                            "--eval-questions 10 --no-progress"),
    Rule(r"^quill report\b", "20 held-out questions per half for each stage instead of 200", append="--n 20"),
    Rule(r"^quill calc\b", "a 3-step model may answer wrong: exit 1 is calc saying so", codes=(0, 1)),
    Rule(r"^quill bench train\b", "1 step per variant; compiling seed-gpt takes minutes on 2 cores, so the "
                                  "compiled row runs eagerly here", append="--steps 1 --warmup 0 --batch-size 1",
         env={"TORCHDYNAMO_DISABLE": "1"}),
    Rule(r"^quill bench sample\b", "20 tokens", append="--new-tokens 20"),
    Rule(r"^quill bench serve\b", "8 requests", append="--requests 8 --clients 2 --tokens-per-request 8"),
    Rule(r"^quill zoo\b", "a third of a second per model", replace=(("--budget 5m", "--budget 0.3s"),),
         append="--eval-iters 1 --no-progress"),
    Rule(r"^quill lesson bigram\b", "20 steps", append="--steps 20"),
    Rule(r"^quill seq2seq\b", "20 steps", append="--steps 20 --n-test 20"),
]


def rule_for(command: str) -> Rule | None:
    return next((rule for rule in SCALE if re.search(rule.pattern, command)), None)


def scaled(command: str, rule: Rule | None) -> str:
    if rule is None:
        return command
    for old, new in rule.replace:
        assert old in command, f"rule {rule.pattern!r}: {old!r} is no longer in {command!r}"
        command = command.replace(old, new)
    return f"{command} {rule.append}".strip()


def steps() -> list[tuple[str, str]]:
    """("bash", one command) or ("python", a block), in README order."""
    out: list[tuple[str, str]] = []
    for match in BLOCK.finditer(README.read_text()):
        lang, body = match.group(1), match.group(2)
        if lang == "python":
            out.append(("python", body))
            continue
        lines = [line for line in body.splitlines() if line.strip()]
        if lines and all(COMMAND.match(line) for line in lines):
            out.extend(("bash", COMMENT.sub("", line)) for line in lines)
    return out


def test_the_readme_has_commands_and_every_scale_rule_is_used() -> None:
    commands = [code for kind, code in steps() if kind == "bash"]
    assert len(commands) > 40 and any(c.startswith("quill sft") for c in commands)
    used = {rule.pattern for c in commands if (rule := rule_for(c))}
    assert used == {rule.pattern for rule in SCALE}, "a SCALE rule matches no README command: remove it"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(port: int, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"quill serve exited with {server.returncode}: {server.stderr.read()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"quill serve on port {port} did not become healthy in {timeout} s")


def small_texts(folder: Path, shakespeare: str) -> None:
    """The files the README's `quill prepare --text` examples name."""
    (folder / "my.txt").write_text(shakespeare[:50_000])
    (folder / "books").mkdir()
    (folder / "books" / "a.txt").write_text(shakespeare[50_000:80_000])
    (folder / "more").mkdir()
    (folder / "more" / "b.txt").write_text(shakespeare[80_000:100_000])
    (folder / "notes.txt.gz").write_bytes(gzip.compress(shakespeare[100_000:120_000].encode()))


@pytest.mark.slow
def test_the_readme_runs_in_order(tmp_path: Path) -> None:
    data_dir = os.environ.get("QUILL_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    small_texts(tmp_path, (Path(data_dir) / "tinyshakespeare" / "input.txt").read_text())
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "QUILL_DATA_DIR": data_dir, "KEY": "readme-test-key",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}  # tiny models: one thread each is faster on a shared CPU
    quill = f'quill() {{ "{sys.executable}" -m quillgpt "$@"; }}\nset -e\n'
    servers: list[tuple[subprocess.Popen, int]] = []
    try:
        for number, (kind, code) in enumerate(steps(), 1):
            rule = rule_for(code) if kind == "bash" else None
            if rule and rule.pattern.startswith("^make"):
                continue  # .ci/run runs make test and make demo themselves
            command = scaled(code, rule)
            if kind == "python":
                # The client examples talk to the first `quill serve` the page started, on its own free port.
                port = servers[0][1]
                script = tmp_path / f"block{number}.py"
                script.write_text(code.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
                result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                                        text=True, timeout=300)
                assert result.returncode == 0, f"README python block {number} failed:\n{code}\n{result.stderr}"
                continue
            if re.search(r"\bquill serve\b", command):  # a server runs until stopped: start it, check it
                port = free_port()
                server = subprocess.Popen(["bash", "-c", f"{quill}{command} --port {port}"], cwd=tmp_path,
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                          start_new_session=True)
                servers.append((server, port))
                wait_healthy(port, server)
                continue
            print(f"README: {code}" + (f"\n   ran: {command}   ({rule.why})" if rule else ""), flush=True)
            result = subprocess.run(["bash", "-c", quill + command], cwd=tmp_path, env={**env, **(rule.env if rule
                                    else {})}, input=rule.stdin if rule else "", capture_output=True, text=True,
                                    timeout=600)
            codes = rule.codes if rule else (0,)
            assert result.returncode in codes, (f"README command failed (exit {result.returncode}): {code}\n"
                                                f"ran: {command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    finally:
        for server, _ in servers:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)
    # What the page promised is there.
    for path in ("runs/cpu-small/config.json", "runs/cpu-small-sft/config.json", "runs/cpu-small-sft-rm",
                 "runs/cpu-small-sft-grpo", "runs/cpu-small-sft-ppo", "runs/cpu-small-sft-dpo", "attn.png",
                 "runs/tracked/tb", "mlruns"):
        assert (tmp_path / path).exists(), path
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)
