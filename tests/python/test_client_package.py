"""The calldesk-client package (clients/python) as its users get it: installed from a wheel,
typed (py.typed + .pyi), and its example run against the real `calldesk serve` binary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "clients" / "python" / "example.py"
RUN_TIMEOUT_S = 60


def test_package_is_installed_with_its_type_stubs():
    import calldesk
    import calldesk.v1

    package = Path(calldesk.__file__).resolve().parent
    # Imported from the installed wheel, not from the source tree.
    assert "site-packages" in package.parts, package
    assert (package / "py.typed").is_file()
    v1 = Path(calldesk.v1.__file__).resolve().parent
    for name in ("calldesk_pb2", "calldesk_pb2_grpc"):
        assert (v1 / f"{name}.py").is_file()
        assert (v1 / f"{name}.pyi").is_file()


def test_example_type_checks_against_the_stubs(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path), str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert run.returncode == 0, run.stdout + run.stderr

    # The stubs are what mypy read: a misspelt field is an error.
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from calldesk.v1 import calldesk_pb2 as pb\n"
        'pb.StartCallRequest(phone_numbr="+12025550100")\n'
    )
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path), str(bad)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert 'Unexpected keyword argument "phone_numbr" for "StartCallRequest"' in run.stdout


def test_example_runs_against_calldesk(server_address):
    try:
        run = subprocess.run(
            [sys.executable, str(EXAMPLE), "--addr", server_address, "--agent", "py-example"],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"example.py did not finish within {RUN_TIMEOUT_S}s: {err.stdout!r}")
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith("started ")
    assert lines[1:] == [
        "event 1 INTERACTION_STATE_DELIVERY_PENDING CALL_PROGRESS_DIALING",
        "event 2 INTERACTION_STATE_DELIVERY_PENDING CALL_PROGRESS_RINGING",
        "event 3 INTERACTION_STATE_DELIVERED CALL_PROGRESS_CONNECTED",
        "event 4 INTERACTION_STATE_WRAP_UP CALL_PROGRESS_ENDED",
        "event 5 INTERACTION_STATE_COMPLETED CALL_PROGRESS_ENDED",
        "unknown interaction: NOT_FOUND interaction not found",
    ]
