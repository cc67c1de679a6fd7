"""The local cluster that `connect()` starts (the session's shared cluster is one)."""

from __future__ import annotations

import os

import pytest

from s2o_platform.ray_cluster import LOCAL_WORKER_NICENESS, MIN_LOCAL_CPUS, local_cpus


@pytest.mark.parametrize(
    "cores,asked,expected",
    [(2, None, 4), (1, None, 4), (None, None, 4), (16, None, 16), (2, 6, 6), (16, 3, 3)],
)
def test_local_cluster_cpus_are_the_cores_but_at_least_the_minimum(monkeypatch, cores, asked, expected):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert MIN_LOCAL_CPUS == 4
    assert local_cpus(asked) == expected


@pytest.mark.ray
def test_local_cluster_workers_run_at_normal_priority(ray_cluster):
    ray = ray_cluster

    @ray.remote(num_cpus=1)
    def niceness() -> int:
        return os.nice(0)

    assert os.environ["RAY_worker_niceness"] == str(LOCAL_WORKER_NICENESS)
    # Ray's default would be 15: a worker that yields the CPU to every Ray background process.
    assert ray.get(niceness.remote()) == LOCAL_WORKER_NICENESS == 0


def _kill_processes_mentioning(marker: str) -> None:
    """Stop every process of a `ray start` cluster by its unique temp dir (`ray stop` would stop every
    Ray cluster on the machine, the test session's own too)."""
    import psutil

    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or []):
                procs.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)  # some of Ray's ignore SIGTERM: no need to wait long
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:  # ended since
            pass


@pytest.fixture
def ray_start_head():
    """A cluster started the way Ray's docs have users start one (`ray start --head`), on loopback, with its own
    ports and temp dir; RAY_TMPDIR points commands at that temp dir, where `ray start` records the cluster."""
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from s2o_platform.serving.runner import free_port

    tmp = tempfile.mkdtemp(prefix="s2o-rs-", dir="/tmp")  # short: Ray's socket paths live under it
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = tmp
    # Ray swaps 127.0.0.1 for the machine's outward address on Linux; this switch (Ray's own, for laptops)
    # keeps the node, its GCS and every connection to it on loopback.
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_cli = str(Path(sys.executable).with_name("ray"))
    started = subprocess.run(
        [
            ray_cli,
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={tmp}/ray",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert Path(tmp, "ray", "ray_current_cluster").read_text().strip() == f"127.0.0.1:{port}"
        yield env, port
    finally:
        _kill_processes_mentioning(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.ray
def test_commands_beside_a_running_ray_start_cluster(ray_start_head, tmp_path):
    """Without --address a command starts a cluster of its own; with --address auto it joins `ray start`'s."""
    import subprocess
    import sys
    from pathlib import Path

    env, port = ray_start_head
    s2o = str(Path(sys.executable).with_name("s2o"))

    def synth(out: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [s2o, "data", "synth", "--out", str(tmp_path / out), "--pairs", "16", "--size", "16", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    own = synth("own")
    assert own.returncode == 0 and "Traceback" not in own.stderr, own.stderr[-3000:]
    assert "local Ray cluster" in own.stderr and f"127.0.0.1:{port})" not in own.stderr
    joined = synth("joined", "--address", "auto")
    assert joined.returncode == 0 and "Traceback" not in joined.stderr, joined.stderr[-3000:]
    assert f"Ray cluster at auto (GCS 127.0.0.1:{port})" in joined.stderr
    for out in ("own", "joined"):
        assert (tmp_path / out / "_s2o_store.json").is_file()


def test_a_bad_address_is_one_line_without_traceback(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    s2o = str(Path(sys.executable).with_name("s2o"))
    # (not --address auto: Ray's auto finds any running cluster's GCS on the machine, the test session's too;
    # not an unreachable host:port: Ray retries that for minutes before it gives up)
    result = subprocess.run(
        [s2o, "data", "synth", "--out", str(tmp_path / "s"), "--address", "127.0.0.1:notaport"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "error: cannot connect to the Ray cluster at '127.0.0.1:notaport'" in result.stderr
    assert "check the address" in result.stderr and len(result.stderr.strip().splitlines()) == 1
