"""Serving that no single client can stall (issue 24), on the shared local Ray cluster with real HTTP:
a request priced from its header and refused when too costly, a large admitted request that takes
turns with small ones and whose work is dropped when its client leaves, slow request bodies cut off
with 408 while other clients are served, decode bombs refused, and a model replica killed mid-request
answered with 503 + Retry-After JSON (never a bare 500) and /healthz following the replica's life."""

from __future__ import annotations

import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from PIL import Image

from s2o_platform.data.store import read_metadata
from s2o_platform.serving.runner import free_port, plan_serving, start_serving
from s2o_platform.serving.settings import DEFAULT_CONFIG
from s2o_platform.train.untrained import write_untrained_bundles
from tests.fixtures import TINY_CONFIGS, png_bytes
from tests.serving.helpers import post

pytestmark = pytest.mark.ray
ONE_REPLICA = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}


@pytest.fixture(scope="module")
def student(synth_store_32, tmp_path_factory):
    return write_untrained_bundles(
        TINY_CONFIGS, tmp_path_factory.mktemp("hardening-bundles"), read_metadata(synth_store_32)
    )["student"]


@pytest.fixture(scope="module")
def guarded(ray_cluster, student):
    """The shipped config with 1024 px images allowed (as the issue's observations used), short body
    deadlines, and one model replica."""
    from ray import serve

    plan = plan_serving(
        DEFAULT_CONFIG,
        model=student,
        port=free_port(),
        overrides={"max_image_side": 1024, "body_timeout_s": 3, "body_chunk_timeout_s": 1},
    )
    plan.deployment_options["SarTranslator"].update(ONE_REPLICA)
    url = start_serving(plan)
    yield url
    serve.shutdown()


def extra_app(base_url: str, name: str, student: str, options: dict | None = None, **settings) -> str:
    """Another application on the running Serve (its own replicas and settings); returns its URL."""
    from ray import serve

    from s2o_platform.serving.app import application
    from s2o_platform.serving.settings import ServeSettings

    serve.run(
        application(
            ServeSettings(model=student, **settings), {"SarTranslator": {**ONE_REPLICA, **(options or {})}}
        ),
        name=name,
        route_prefix=f"/{name}",
    )
    return f"{base_url.rstrip('/')}/{name}"


def health(url: str) -> requests.Response:
    # The readiness check answers within 1 s by design; a client deadline of 5 s turns a hang into a failure.
    return requests.get(f"{url}/healthz", timeout=5)


def wait_for(predicate, what: str, deadline_s: float = 120.0, every_s: float = 0.2):
    """Poll until `predicate()` is truthy (returns it); fail naming `what` after `deadline_s`."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    pytest.fail(f"timed out after {deadline_s:g} s waiting for {what}")


def blank_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def raw_post(url: str, content_length: int, first_bytes: bytes, path: str = "/v1/translate") -> socket.socket:
    """Open a connection and send a POST's headers and the first bytes of its body only."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    head = (
        f"POST {parts.path.rstrip('/')}{path} HTTP/1.1\r\nHost: {parts.hostname}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {content_length}\r\nConnection: close\r\n\r\n"
    ).encode()
    sock.sendall(head + first_bytes)
    return sock


def status_of(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    sock.close()
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else -1


def test_health_and_model_say_what_a_client_needs_and_no_server_paths(guarded, student):
    answer = health(guarded)
    assert answer.status_code == 200 and answer.json()["status"] == "ready"
    info = requests.get(f"{guarded}/v1/model", timeout=30)
    assert info.status_code == 200
    for key in (
        "stage",
        "tile_size",
        "default_steps",
        "allowed_steps",
        "max_image_side",
        "max_request_model_s",
    ):
        assert key in info.json(), key
    for text in (answer.text, info.text):
        assert student not in text and "/tmp" not in text and "path" not in text


def test_a_costly_request_is_priced_from_its_header_and_a_small_one_right_after_is_served(guarded):
    body = blank_png(1024)
    assert len(body) < 8 * 1024  # the case: about 1 KB that decodes into 1,849 tiles
    costly = post(guarded, body, timeout=90)
    small_started = time.monotonic()
    small = post(
        guarded, png_bytes(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)), timeout=30
    )
    small_s = time.monotonic() - small_started
    assert small.status_code == 200, small.text
    if costly.status_code == 413:  # at this replica's measured speed the work exceeds max_request_model_s
        error = costly.json()
        assert error["error"] == "too_costly"
        assert "1849 tiles" in error["detail"] and "at most" in error["detail"], error["detail"]
        # nothing of the refused request was queued: the small one ran alone, at once
        assert small.headers["X-S2O-Batch-Requests"] == "1"
    else:  # a machine fast enough to do it within the budget answers it within the timeout
        assert costly.status_code == 200, costly.text
    assert small_s < 5, f"a 1-tile request after the costly one took {small_s:.1f} s"


def test_a_large_admitted_request_takes_turns_and_its_work_is_dropped_when_the_client_leaves(
    guarded, student
):
    url = extra_app(
        guarded, "patient", student, max_image_side=1024, max_request_model_s=100_000, model_batch_tiles=16
    )
    try:
        big = raw_post(url, len(blank_png(1024)), blank_png(1024))  # 1,849 tiles: minutes of work on this CPU
        wait_for(
            lambda: health(url).json().get("pending_tiles", 0) > 0, "the large request's tiles to be queued"
        )
        # A small request sent now goes into the next forward pass, not behind the large request's 116 passes.
        small = post(
            url, png_bytes(np.random.default_rng(1).integers(0, 255, (32, 32), dtype=np.uint8)), timeout=60
        )
        assert small.status_code == 200, small.text
        left = health(url).json()["pending_tiles"]
        assert left > 0, (
            "the large request finished first: nothing showed that the small one jumped the queue"
        )
        big.close()  # the client goes away
        state = wait_for(
            lambda: (lambda s: s if s["pending_tiles"] == 0 else None)(health(url).json()),
            "the departed client's tiles to leave the queue",
            deadline_s=60,
        )
        assert state["dropped_tiles"] > 0
        assert post(url, png_bytes(np.zeros((32, 32), np.uint8)), timeout=60).status_code == 200
    finally:
        from ray import serve

        serve.delete("patient")


def test_slow_bodies_get_408_and_other_clients_are_served(guarded):
    slow = [raw_post(guarded, 100_000, b"\x89PNG\r\n\x1a\n\x00\x00") for _ in range(100)]
    try:
        tile = png_bytes(np.random.default_rng(2).integers(0, 255, (32, 32), dtype=np.uint8))
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: post(guarded, tile, query="?steps=1", timeout=60), range(16)))
        assert [a.status_code for a in answers] == [200] * 16
        assert [status_of(sock) for sock in slow] == [408] * 100
    finally:
        for sock in slow:
            sock.close()


def test_a_body_trickled_past_the_total_deadline_gets_408(guarded):
    sock = raw_post(guarded, 1000, b"\x89PNG")
    stop = threading.Event()

    def trickle():  # a byte every half second: never pauses past the chunk deadline, never finishes in time
        try:
            while not stop.wait(0.5):
                sock.sendall(b"\x00")
        except OSError:
            pass

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        assert status_of(sock) == 408
    finally:
        stop.set()
        feeder.join()


def test_a_png_declaring_60000_px_a_side_is_413_not_500(guarded):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )
    answer = post(guarded, bomb)
    assert answer.status_code == 413 and answer.json()["error"] == "too_large", answer.text


def test_a_killed_replica_gives_503_json_never_a_bare_500_and_health_follows(guarded, student):
    import ray
    from ray import serve

    # a budget that admits all six requests at once, however loaded the machine: this tests replica loss, not admission
    url = extra_app(
        guarded, "fragile", student, max_image_side=1024, model_batch_tiles=16, max_request_model_s=100
    )
    try:
        assert health(url).status_code == 200
        body = png_bytes(np.random.default_rng(3).integers(0, 255, (256, 256), dtype=np.uint8))  # 121 tiles
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post, url, body, "image/png", "?steps=2", 120) for _ in range(6)]
            wait_for(lambda: health(url).json().get("pending_tiles", 0) > 0, "work in flight")
            # Serve's replicas are named actors in the "serve" namespace of this cluster
            replica = [
                a["name"]
                for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == "serve" and "fragile" in a["name"] and "SarTranslator" in a["name"]
            ]
            assert len(replica) == 1, replica
            killed_at = time.monotonic()
            ray.kill(ray.get_actor(replica[0], namespace="serve"), no_restart=True)
            # no replica can take work while the controller replaces it (loading a model takes seconds)
            down = health(url)
            assert down.status_code == 503 and down.json()["status"] == "unavailable", down.text
            answers = [f.result() for f in futures]
        for answer in answers:
            assert answer.status_code in (200, 503), (answer.status_code, answer.text)
            if answer.status_code == 503:
                assert answer.json()["error"] == "unavailable" and answer.headers["Retry-After"] == "1"
        # /healthz answers (within its deadline) whatever the replica's state, and is 200 again once the
        # controller has replaced the replica
        wait_for(lambda: health(url).status_code == 200, "a healthy replica after the kill")
        print(f"time to recovery after a replica kill: {time.monotonic() - killed_at:.1f} s")
        assert post(url, body, query="?steps=1", timeout=60).status_code == 200
    finally:
        serve.delete("fragile")
