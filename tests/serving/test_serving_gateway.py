"""SarGateway's answers to what the model replicas do, without a cluster: the ingress class driven with
real Starlette requests and a stand-in deployment handle whose calls fail the ways Ray's do (a replica
dies, every queue is full, nothing answers, a bug). Serving over real HTTP is tests/serving/test_serve_*.py."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from starlette.requests import Request

from s2o_platform.serving.app import RETRY_AFTER_S, Answer, SarGateway, read_body
from s2o_platform.serving.codec import RequestError
from tests.fixtures import png_bytes

# Serve's ingress wrapper subclasses our class; its base is SarGateway as written (no ASGI wrapper)
GatewayClass = SarGateway.func_or_class.__mro__[1]
BODY = png_bytes(np.zeros((32, 32), np.uint8))


class Call:
    """A stand-in for `handle.method`: `.remote(...)` returns an awaitable that runs `behaviour`."""

    def __init__(self, behaviour):
        self.behaviour, self.calls = behaviour, 0

    def remote(self, *args):
        self.calls += 1
        return self.behaviour(self.calls, *args)


class Handle:
    def __init__(self, translate=None, readiness=None):
        self.translate = Call(translate or ok)
        self.readiness = Call(readiness or ready)


async def ok(call, body, kind, steps, fmt, samples=0):
    return Answer(200, b"png-bytes", "image/png", {"X-S2O-Steps": "4"})


async def ready(call):
    return {"ready": True, "status": "ready", "backlog_s": 0.0, "pending_tiles": 0, "dropped_tiles": 0}


def request(
    body: bytes = BODY,
    content_type: str = "image/png",
    chunks: list[bytes] | None = None,
    pause_s: float = 0.0,
) -> Request:
    """A Starlette request whose body arrives in `chunks` (default: one), `pause_s` apart."""
    parts = list(chunks if chunks is not None else [body])

    async def receive():
        if pause_s:
            await asyncio.sleep(pause_s)
        if parts:
            part = parts.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(parts)}
        await asyncio.Event().wait()  # a client that sends nothing more and stays connected

    headers = [(b"content-type", content_type.encode())]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/translate",
        "headers": headers,
        "query_string": b"",
    }
    return Request(scope, receive)


def gateway(handle: Handle, **settings) -> GatewayClass:
    return GatewayClass(handle, {"model": "unused", **settings})


def answer(gw, req=None, steps=None, fmt=None, uncertainty=None):
    return asyncio.run(gw.translate(req or request(), steps, fmt, uncertainty))


def as_json(response) -> dict:
    return json.loads(response.body)


def test_uncertainty_is_parsed_at_the_gateway_and_passed_on():
    seen = []

    async def records(call, body, kind, steps, fmt, samples):
        seen.append(samples)
        return await ok(call, body, kind, steps, fmt)

    gw = gateway(Handle(translate=records))
    assert answer(gw, uncertainty="4").status_code == 200 and seen == [4]
    assert answer(gw).status_code == 200 and seen == [4, 0]
    refused = answer(gw, uncertainty="1")
    assert refused.status_code == 422 and as_json(refused)["error"] == "bad_uncertainty" and seen == [4, 0]


def test_an_image_answer_passes_through():
    response = answer(gateway(Handle()))
    assert (
        response.status_code == 200
        and response.body == b"png-bytes"
        and response.headers["X-S2O-Steps"] == "4"
    )


def test_a_refusal_from_the_replica_is_its_json_error():
    async def refuse(call, *args):
        return Answer(413, error={"error": "too_costly", "detail": "send less"})

    response = answer(gateway(Handle(translate=refuse)))
    assert response.status_code == 413 and as_json(response) == {"error": "too_costly", "detail": "send less"}


def test_a_replica_lost_mid_request_is_retried_once_when_another_is_ready():
    from ray.exceptions import ActorDiedError

    async def dies_once(call, *args):
        if call == 1:
            raise ActorDiedError()
        return await ok(call, *args)

    handle = Handle(translate=dies_once)
    response = answer(gateway(handle))
    assert response.status_code == 200 and handle.translate.calls == 2


@pytest.mark.parametrize("replica_ready", [True, False])
def test_a_lost_replica_is_503_json_with_retry_after_never_a_bare_500(replica_ready):
    from ray.exceptions import ActorDiedError

    async def always_dies(call, *args):
        raise ActorDiedError()

    async def readiness(call):
        return {**(await ready(call)), "ready": replica_ready}

    handle = Handle(translate=always_dies, readiness=readiness)
    response = answer(gateway(handle))
    assert response.status_code == 503 and response.headers["Retry-After"] == str(RETRY_AFTER_S)
    assert as_json(response)["error"] == "unavailable"
    # retried once only when a replica could take it; never waiting on a replacement being loaded
    assert handle.translate.calls == (2 if replica_ready else 1)


def test_full_queues_are_503_json_with_retry_after():
    from ray.serve.exceptions import BackPressureError

    async def full(call, *args):
        raise BackPressureError(num_queued_requests=64, max_queued_requests=64)

    response = answer(gateway(Handle(translate=full)))
    assert response.status_code == 503 and response.headers["Retry-After"] == str(RETRY_AFTER_S)
    assert as_json(response)["error"] == "unavailable"


def test_an_unexpected_failure_is_500_with_an_error_id_and_no_exception_text(caplog):
    async def bug(call, *args):
        raise KeyError("/srv/models/secret-bundle/weights.safetensors")

    with caplog.at_level("ERROR", logger="s2o.serve"):
        response = answer(gateway(Handle(translate=bug)))
    body = as_json(response)
    assert response.status_code == 500 and body["error"] == "internal"
    assert "secret" not in response.body.decode() and "KeyError" not in response.body.decode()
    # the id in the answer is the one in the log, beside the detail
    logged = [r for r in caplog.records if body["error_id"] in r.getMessage()]
    assert logged and "secret-bundle" in logged[0].exc_text


def test_healthz_answers_within_its_deadline_when_no_replica_answers():
    async def never(call):
        await asyncio.Event().wait()

    async def scenario():
        gw = gateway(Handle(readiness=never))
        return await asyncio.wait_for(gw.healthz(), timeout=3)  # the readiness deadline is 1 s

    response = asyncio.run(scenario())
    assert response.status_code == 503 and as_json(response)["status"] == "unavailable"


def test_healthz_is_503_when_the_replica_is_busy_and_200_when_ready():
    async def busy(call):
        return {
            "ready": False,
            "status": "busy",
            "backlog_s": 42.0,
            "pending_tiles": 4000,
            "dropped_tiles": 0,
        }

    assert asyncio.run(gateway(Handle(readiness=busy)).healthz()).status_code == 503
    healthy = asyncio.run(gateway(Handle()).healthz())
    assert healthy == {"status": "ready", "backlog_s": 0.0, "pending_tiles": 0, "dropped_tiles": 0}


def test_a_stalled_body_is_408_and_a_slow_one_past_the_total_deadline_too():
    stalled = request(chunks=[b"\x89PNG", b"rest"], pause_s=0.0)
    stalled_parts = [b"\x89PNG"]  # then nothing: the client idles

    async def idle_after_first():
        if stalled_parts:
            return {"type": "http.request", "body": stalled_parts.pop(), "more_body": True}
        await asyncio.Event().wait()

    stalled._receive = idle_after_first
    with pytest.raises(RequestError) as err:
        asyncio.run(read_body(stalled, 1000, total_s=5, chunk_s=0.2))
    assert err.value.status == 408 and "4 bytes received" in err.value.message

    trickle = request(chunks=[b"x"] * 50, pause_s=0.05)  # never pauses 0.2 s, but takes 2.5 s in all
    with pytest.raises(RequestError) as err:
        asyncio.run(read_body(trickle, 1000, total_s=0.5, chunk_s=0.2))
    assert err.value.status == 408 and "within 0.5 s" in err.value.message


def test_a_body_over_the_limit_while_streaming_is_413():
    with pytest.raises(RequestError) as err:
        asyncio.run(read_body(request(chunks=[b"x" * 600, b"x" * 600]), 1000, total_s=5, chunk_s=1))
    assert err.value.status == 413


def test_a_busy_answer_from_the_replica_carries_retry_after():
    async def busy(call, *args):
        return Answer(503, error={"error": "busy", "detail": "12.0 s of work waiting"})

    response = answer(gateway(Handle(translate=busy)))
    assert response.status_code == 503 and response.headers["Retry-After"] == str(RETRY_AFTER_S)
    assert as_json(response)["error"] == "busy"


def test_admission_prices_tiles_times_steps_and_says_what_fits():
    from s2o_platform.serving.app import admission_error

    # 1849 tiles x 4 steps x 10 ms = 73.96 s > 20 s
    err = admission_error(1849, 4, 0.010, 20.0, tile=32, overlap=8, height=1024, width=1024)
    assert (err.status, err.kind) == (413, "too_costly")
    # fits: 20 s / (4 x 10 ms) = 500 tiles -> 22 x 22 windows -> 32 + 21 x 24 = 536 px; at this size 20 / 18.49 = 1 step
    assert "about 74.0 s" in err.message and "at most 536x536 px at 4 step(s)" in err.message
    assert "at most 1 step(s) at this size" in err.message
    assert admission_error(500, 4, 0.010, 20.0, 32, 8, 536, 536) is None  # exactly at the budget is admitted


def test_step_counts_below_one_are_refused_for_every_sampler():
    from s2o_platform.bundle import BundleError, SamplerSpec
    from s2o_platform.inference import resolve_sampler_for

    class Meta:
        stage = "teacher"
        sampler = SamplerSpec("ddim", 50, ["ddim", "ddpm"])

    assert resolve_sampler_for(Meta, "t", None, 7) == ("ddim", 7)
    for bad in (0, -1):
        with pytest.raises(BundleError, match="at least 1"):
            resolve_sampler_for(Meta, "t", None, bad)
