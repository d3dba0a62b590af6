"""Fixtures of the cross-language test: the calldesk-client package (clients/python, installed
into .venv by ./scripts/test), and the real `calldesk serve` binary as a subprocess.

The binary is built by ./scripts/test (`cargo build --locked`) before pytest runs:
$CARGO_TARGET_DIR (default target/)/debug/calldesk. Set CALLDESK_BIN to test another one.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import types
from pathlib import Path

import grpc
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR") or REPO_ROOT / "target")
DEFAULT_BINARY = (REPO_ROOT / TARGET_DIR / "debug" / "calldesk").resolve()

LISTENING = re.compile(r"calldesk listening on (\S+)")
STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0

# Agent identity in development mode (no --auth-tokens): the x-agent-id metadata.
AGENT_ID = "py-agent"
AGENT_METADATA = (("x-agent-id", AGENT_ID),)


@pytest.fixture(scope="session")
def pb() -> types.SimpleNamespace:
    """The installed calldesk-client package (clients/python; ./scripts/test installs it)."""
    from calldesk.v1 import calldesk_pb2, calldesk_pb2_grpc

    return types.SimpleNamespace(pb2=calldesk_pb2, pb2_grpc=calldesk_pb2_grpc)


def _pump(stream, lines: "queue.Queue[str | None]") -> None:
    """Forwards the server's stdout line by line (and keeps draining it so it never blocks)."""
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def _serve(work: Path, extra_args: list[str]):
    """Runs `calldesk serve` on a free loopback port with `extra_args`, in `work`; yields
    HOST:PORT; stops it afterwards."""
    binary = Path(os.environ.get("CALLDESK_BIN", DEFAULT_BINARY))
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(
            f"calldesk binary not found at {binary}: build it first with `cargo build --locked` "
            "(./scripts/test does), or point CALLDESK_BIN at one",
            pytrace=False,
        )

    data_dir = work / "data"
    stderr_path = work / "stderr.log"
    cmd = [
        str(binary),
        "serve",
        "--listen", "127.0.0.1:0",
        "--data-dir", str(data_dir),
        "--sim-ring", "20ms",
        "--sim-answer", "20ms",
        *extra_args,
    ]
    with open(stderr_path, "w", encoding="utf-8") as stderr_file:
        proc = subprocess.Popen(
            cmd,
            cwd=work,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
            bufsize=1,
        )

    def server_log() -> str:
        try:
            text = stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text if len(text) <= 6000 else f"{text[:4000]}\n[...]\n{text[-2000:]}"

    lines: "queue.Queue[str | None]" = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()

    address = None
    seen: list[str] = []
    try:
        while address is None:
            try:
                line = lines.get(timeout=STARTUP_TIMEOUT_S)
            except queue.Empty:
                pytest.fail(
                    f"no 'calldesk listening on HOST:PORT' line within {STARTUP_TIMEOUT_S:.0f}s "
                    f"from {' '.join(cmd)}\nstdout: {''.join(seen)}\nstderr: {server_log()}",
                    pytrace=False,
                )
            if line is None:
                code = proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
                pytest.fail(
                    f"calldesk serve exited with code {code} before listening\n"
                    f"stdout: {''.join(seen)}\nstderr: {server_log()}",
                    pytrace=False,
                )
            seen.append(line)
            match = LISTENING.search(line)
            if match:
                address = match.group(1)

        yield address
    finally:
        if proc.poll() is None:
            # SIGINT: a graceful shutdown that hangs up the calls the tests leave live at
            # once (SIGTERM would wait for them to end: --drain-calls-for).
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=SHUTDOWN_TIMEOUT_S)


@pytest.fixture(scope="session")
def server_address(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Starts `calldesk serve` on a free loopback port; yields HOST:PORT; stops it afterwards."""
    yield from _serve(tmp_path_factory.mktemp("calldesk"), [])


# The caller IDs of the server that `caller_ids_address` starts (--caller-ids): py-agent's own
# line, New York first (its default), then Los Angeles and London; everyone else's (`*`), one
# toll-free number.
CALLER_IDS = {
    AGENT_ID: ["+12125550100", "+13105550100", "+442079460000"],
    "*": ["+18005550100"],
}


@pytest.fixture(scope="session")
def caller_ids_address(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second server, with `--caller-ids` naming CALLER_IDS; yields HOST:PORT."""
    work = tmp_path_factory.mktemp("calldesk-caller-ids")
    file = work / "caller-ids.txt"
    file.write_text(
        "# tests/python/conftest.py\n"
        + "".join(f"{agent} {' '.join(numbers)}\n" for agent, numbers in CALLER_IDS.items())
    )
    yield from _serve(work, ["--caller-ids", str(file)])


@pytest.fixture(scope="session")
def channel(server_address: str):
    with grpc.insecure_channel(server_address) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


@pytest.fixture(scope="session")
def stub(pb, channel):
    return pb.pb2_grpc.InteractionServiceStub(channel)


@pytest.fixture
def agent_metadata():
    return AGENT_METADATA
