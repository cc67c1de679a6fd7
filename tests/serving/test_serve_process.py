"""`s2o serve` as a real process (issue 24, minimal exposure): every Ray port of the local cluster it
starts listens on loopback, Ray's token file is readable by its owner only, and SIGTERM shuts Serve
and every process of that cluster down, as Ctrl-C does. Plus the pieces of `ray_cluster` behind it,
without Ray."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from s2o_platform.data.store import SarNormalization, StoreMetadata
from s2o_platform.ray_cluster import (
    ANY_INTERFACE,
    BIND_ENV,
    LOOPBACK,
    RayStartError,
    _create_auth_token,
    _is_loopback_address,
    auth_token_path,
    bind_address,
    restrict_auth_token,
)
from s2o_platform.serving.runner import free_port
from s2o_platform.train.untrained import write_untrained_bundles
from tests.fixtures import TINY_CONFIGS

S2O = str(Path(sys.executable).with_name("s2o"))
LOOPBACK_ADDRESSES = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
#: A bound on waiting, never a timing assumption: start-up is ~15-60 s on the 2-core CI machine under load.
READY_DEADLINE_S = 300
SESSION_DIR = re.compile(r"(/\S*?/session_\d{4}-\d\d-\d\d_[\d_-]+?_\d+)(?:/|$)")


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> str:
    """An untrained 32 px student bundle (no Ray needed to write it)."""
    store = StoreMetadata(tile_size=32, sar_channels=1, sar_normalization=SarNormalization())
    return write_untrained_bundles(TINY_CONFIGS, tmp_path_factory.mktemp("serve-process-bundles"), store)[
        "student"
    ]


def _session_processes(server) -> dict:
    """The server and every process of the Ray session it started: its descendants, plus any process on the
    machine whose command line names the session's directory (one re-parented to init is found too)."""
    import psutil

    found = {server.pid: server, **{p.pid: p for p in server.children(recursive=True)}}
    sessions = set()
    for proc in list(found.values()):
        try:
            sessions.update(m.group(1) for part in proc.cmdline() for m in [SESSION_DIR.search(part)] if m)
        except psutil.Error:
            continue
    assert len(sessions) == 1, f"expected the one Ray session of this server, found {sessions}"
    session = sessions.pop()
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(session in part for part in proc.info["cmdline"] or []):
                found[proc.pid] = proc
        except psutil.Error:
            continue
    return found


def _listeners(processes) -> list[tuple[str, str, int]]:
    import psutil

    out = []
    for proc in processes:
        try:
            out += [
                (proc.name(), c.laddr.ip, c.laddr.port)
                for c in proc.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            ]
        except psutil.Error:
            continue
    return out


def _alive(processes) -> list:
    import psutil

    alive = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            continue
    return alive


@pytest.mark.ray
def test_s2o_serve_listens_on_loopback_and_sigterm_leaves_no_ray_process(student, tmp_path):
    import psutil

    port = free_port()
    home = tmp_path / "home"  # a home of its own: its Ray token file is this test's, not the user's
    token = home / ".ray" / "auth_token"
    token.parent.mkdir(parents=True)
    token.write_text("0123456789abcdef" * 4)
    token.chmod(0o644)  # as Ray writes it with the usual umask
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "RAY_ADDRESS",
            BIND_ENV,
            "RAY_AUTH_MODE",
            "RAY_AUTH_TOKEN",
            "RAY_AUTH_TOKEN_PATH",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
        )
    }
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [S2O, "serve", "--model", student, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = psutil.Process(proc.pid)
    session: dict = {}
    try:
        # Ready = /healthz answers 200 (the bundle is loaded and a forward pass succeeded).
        deadline = time.monotonic() + READY_DEADLINE_S
        while True:
            assert proc.poll() is None, f"s2o serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, (
                f"not ready after {READY_DEADLINE_S} s:\n{log.read_text()[-4000:]}"
            )
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)

        session = _session_processes(server)
        names = {p.name() for p in _alive(session.values())}
        assert {"gcs_server", "raylet"} <= names and any("DashboardAgent" in n for n in names), names
        listeners = _listeners(session.values())
        assert any(name == "gcs_server" for name, _, _ in listeners), listeners
        assert port in {p for _, ip, p in listeners if ip in LOOPBACK_ADDRESSES}, (
            f"no HTTP proxy on {port}: {listeners}"
        )
        exposed = [entry for entry in listeners if entry[1] not in LOOPBACK_ADDRESSES]
        assert exposed == [], f"Ray listens beyond loopback: {exposed}"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-4000:]
        assert "[serve] shutting down" in log.read_text()
        # The agents leave a moment after the raylet that started them: wait for each to exit (bounded).
        _, alive = psutil.wait_procs(list(session.values()), timeout=20)
        leftovers = [(p.pid, p.name()) for p in _alive(alive)]
        assert leftovers == [], f"processes of the Ray session outlived s2o serve: {leftovers}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for leftover in _alive(session.values()):  # only the processes this test started
            try:
                leftover.kill()
            except psutil.Error:
                pass


# ------------------------------------------------------------------------------------------------
# The pieces, without Ray
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "asked,env,expected",
    [
        (None, None, LOOPBACK),
        (None, "0.0.0.0", ANY_INTERFACE),
        ("localhost", "0.0.0.0", LOOPBACK),
        ("10.1.2.3", None, "10.1.2.3"),
        (None, " 127.0.0.1 ", LOOPBACK),
    ],
)
def test_bind_address_is_loopback_unless_asked(monkeypatch, asked, env, expected):
    monkeypatch.delenv(BIND_ENV, raising=False)
    if env is not None:
        monkeypatch.setenv(BIND_ENV, env)
    assert bind_address(asked) == expected


def test_a_bad_bind_address_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv(BIND_ENV, "everywhere")
    with pytest.raises(RayStartError, match="S2O_RAY_BIND='everywhere' is not an IP address"):
        bind_address()


@pytest.mark.parametrize(
    "address,expected",
    [
        ("127.0.0.1:6379", True),
        ("localhost:6379", True),
        ("[::1]:6379", True),
        ("10.0.0.5:6379", False),
        ("ray://127.0.0.1:10001", False),
        ("http://127.0.0.1:8265", False),
        ("head-svc:6379", False),
    ],
)
def test_which_addresses_are_loopback(address, expected):
    assert _is_loopback_address(address) is expected


@pytest.fixture
def fake_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_a_token_we_create_is_owner_only_from_the_start(fake_home):
    _create_auth_token()
    path = fake_home / ".ray" / "auth_token"
    assert auth_token_path() == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert re.fullmatch(r"[0-9a-f]{64}", path.read_text())  # Ray's own format
    before = path.read_text()
    _create_auth_token()  # an existing token is Ray's (or the user's): never replaced
    assert path.read_text() == before


def test_no_token_is_created_when_authentication_is_off_or_the_token_is_elsewhere(fake_home, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    _create_auth_token()
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x" * 32)
    _create_auth_token()
    assert auth_token_path() is None and not (fake_home / ".ray").exists()


def test_an_existing_token_is_made_owner_only(fake_home):
    path = fake_home / ".ray" / "auth_token"
    path.parent.mkdir()
    path.write_text("a" * 64)
    path.chmod(0o644)
    assert restrict_auth_token() is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.unlink()
    assert restrict_auth_token() is False
