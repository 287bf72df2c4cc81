"""One driver per run folder: a live holder refuses the second, a dead one's lease is taken over."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from orchestrator.errors import RunBusyError
from orchestrator.lease import LEASE_FILE, STALE_AFTER_S, RunLease
from orchestrator.storage import Location, remove_tree, write_text


def plant(folder, **holder):
    lease = {
        "host": socket.gethostname(),
        "pid": 0,
        "started": time.time(),
        "heartbeat": time.time(),
    }
    write_text(Location(str(folder / LEASE_FILE)), json.dumps({**lease, **holder}))


def test_a_live_driver_on_this_host_keeps_its_run(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        plant(tmp_path, pid=other.pid)
        with pytest.raises(RunBusyError, match=f"in use by another run: pid {other.pid} on"):
            RunLease(Location(str(tmp_path))).__enter__()
    finally:
        other.kill()
        other.wait()
    with RunLease(Location(str(tmp_path))) as lease:  # its pid is gone now: stale
        held = json.loads((tmp_path / LEASE_FILE).read_text())
        assert (held["host"], held["pid"]) == (lease.holder.host, lease.holder.pid)
    assert not (tmp_path / LEASE_FILE).exists()  # released


@pytest.mark.parametrize(("age", "busy"), [(5, True), (STALE_AFTER_S + 5, False)])
def test_a_lease_from_another_host_lives_by_its_heartbeat(tmp_path, age, busy):
    plant(tmp_path, host="elsewhere", pid=1, heartbeat=time.time() - age)
    if busy:
        with pytest.raises(RunBusyError, match="pid 1 on elsewhere"):
            RunLease(Location(str(tmp_path))).__enter__()
    else:
        with RunLease(Location(str(tmp_path))):
            assert json.loads((tmp_path / LEASE_FILE).read_text())["host"] != "elsewhere"


def test_the_same_driver_may_come_back_and_fresh_keeps_the_lease(tmp_path):
    location = Location(str(tmp_path))
    (tmp_path / "checkpoint_000001").mkdir()
    (tmp_path / "checkpoint_000001" / "state.pt").write_bytes(b"x")
    with RunLease(location), RunLease(location):  # a rerun in one process: allowed
        assert remove_tree(location, keep=frozenset({LEASE_FILE})) == 1
        assert [p.name for p in tmp_path.iterdir()] == [LEASE_FILE]


def test_a_torn_lease_is_taken_over(tmp_path):
    (tmp_path / LEASE_FILE).write_text('{"host": "x", "pi')
    with RunLease(Location(str(tmp_path))):
        assert json.loads((tmp_path / LEASE_FILE).read_text())["pid"] > 0


def test_run_refuses_a_folder_a_live_driver_holds_before_touching_it(tiny_spec, tmp_path, capsys):
    import yaml

    from orchestrator.__main__ import main
    from orchestrator.layout import run_location
    from orchestrator.spec import load_spec

    folder = run_location(load_spec(tiny_spec)).path
    folder.mkdir(parents=True)
    (folder / "checkpoint_000001").mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        plant(folder, pid=other.pid)
        spec_file = tmp_path / "spec.yaml"
        spec_file.write_text(yaml.safe_dump(tiny_spec))
        assert main(["run", str(spec_file), "--fresh"]) == 2
    finally:
        other.kill()
        other.wait()
    assert f"in use by another run: pid {other.pid}" in capsys.readouterr().err
    assert (folder / "checkpoint_000001").is_dir()  # --fresh deleted nothing
