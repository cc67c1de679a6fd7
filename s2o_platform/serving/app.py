"""The Ray Serve application: a light HTTP ingress (SarGateway) in front of the model replicas (SarTranslator).

    POST /v1/translate?steps=N&format=png|tiff&uncertainty=K   body: the SAR image (image/png, image/jpeg, image/tiff)
    GET  /                                       a page to try the model in a browser (serving/page.py)
    GET  /healthz                                200 when a model replica can take work now; else 503, within 1 s
    GET  /v1/model                               what a client needs: stage, tile size, steps, limits
    GET  /docs                                   OpenAPI (FastAPI's default)

SarGateway (many cheap async slots, no CPU reserved) reads each body under deadlines (a slow client
gets 408 and never holds a model replica's slot), then hands the bytes to a SarTranslator replica
through a deployment handle. When a replica dies mid-request the gateway retries once (a
translation is idempotent: a request's noise is seeded by its own bytes), then answers 503 with
Retry-After and the JSON error body, as it does when the translators' queues are full.

SarTranslator prices a request before decoding a pixel: its tiles x steps from the image header, at
the replica's measured seconds per tile-step; work that would take longer than
`max_request_model_s` is refused (413) with the size and steps that would fit. The image is then
decoded, cut into model tiles with overlap (geo.blending.cut_image) and handed to a CoalescingRunner:
one model thread, each forward pass at most `model_batch_tiles` tiles merged across requests, a
large request's chunks taking turns with other requests, and chunks of a caller that went away
(disconnected, timed out) dropped before the next pass. Tiles are blended back (mosaic_image) and
encoded. With ?uncertainty=K each tile is sampled K times (one forward pass: the request's tiles are K times
heavier, for admission and for merging, which groups requests by (steps, K)): the answer is the samples' mean,
its X-S2O-Uncertainty-Mean header the mean per-pixel spread (std over samples, mean of RGB) in 8-bit output
levels, and a TIFF answer carries the spread as a fourth band. Bad input is a 4xx JSON answer {"error": kind, "detail": message}; an unexpected failure is
a 500 whose body carries only an error id (the detail is in the replica's log).
"""

# No `from __future__ import annotations`: FastAPI must see real types (Request) on the ingress methods.
import asyncio
import hashlib
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from starlette.requests import ClientDisconnect

from s2o_platform.serving.coalescing import CoalescingRunner
from s2o_platform.serving.codec import (
    RequestError,
    check_body,
    decode_sar,
    encode_png,
    encode_tiff,
    media_kind,
    parse_format,
    parse_steps,
    parse_uncertainty,
    read_header,
    uncertainty_levels,
)
from s2o_platform.serving.settings import ServeSettings, settings_from_args

DEPLOYMENT = "SarTranslator"
GATEWAY = "SarGateway"
DEPLOYMENTS = (DEPLOYMENT, GATEWAY)
LATENCY_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
INLINE_BYTES = 64 * 1024  # bodies (and outputs, in values) below this are checked/encoded on the event loop
INLINE_PIXELS = (
    256 * 256
)  # images up to this are decoded, cut and blended on the event loop (a thread hop costs more)
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
READINESS_DEADLINE_S = 1.0  # /healthz answers within this, whatever the replicas do
RETRY_AFTER_S = 1
#: Passes of at least this many tiles update the measured speed (smaller ones cost more per tile, and
#: would make admission refuse work the replica can do).
SPEED_SAMPLE_TILES = 8

log = logging.getLogger("s2o.serve")

api = FastAPI(
    title="s2o-platform: SAR to optical translation",
    description="POST a SAR image to /v1/translate; get an optical-looking RGB image back.",
    version="1",
)


@dataclass
class Answer:
    """What a SarTranslator replica returns to the gateway: an image, or a refusal (status >= 400)."""

    status: int
    content: bytes = b""
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    error: dict[str, str] | None = None


class Metrics:
    """Our counters, exported on Ray's Prometheus endpoint beside Serve's own (names get a `ray_` prefix)."""

    def __init__(self, gateway: bool):
        from ray.util import metrics

        if gateway:
            self.requests = metrics.Counter(
                "s2o_serve_requests", "translate requests by HTTP status", tag_keys=("status",)
            )
            self.errors = metrics.Counter(
                "s2o_serve_errors", "refused or failed requests by kind", tag_keys=("kind",)
            )
            self.latency = metrics.Histogram(
                "s2o_serve_latency_s",
                "translate request latency at the ingress, s",
                boundaries=LATENCY_BOUNDARIES_S,
            )
        else:
            self.batch_requests = metrics.Histogram(
                "s2o_serve_batch_requests", "requests per forward pass", boundaries=BATCH_BOUNDARIES
            )
            self.batch_tiles = metrics.Histogram(
                "s2o_serve_batch_tiles", "model tiles per forward pass", boundaries=BATCH_BOUNDARIES
            )
            self.dropped_tiles = metrics.Counter(
                "s2o_serve_dropped_tiles", "tiles not run because their caller went away"
            )


def _allowed_steps(sampler: str, max_steps: "int | None") -> "list[int] | str":
    """The step counts the served bundle takes: 1..its sampler spec's max_steps (a student's 1..8 by default)."""
    if sampler == "direct":
        return [1]
    if max_steps is not None:
        return list(range(1, max_steps + 1))
    return "any (a teacher; DDIM takes any step count, DDPM its full schedule)"


def admission_error(
    tiles: int,
    steps: int,
    seconds_per_tile_step: float,
    budget_s: float,
    tile: int,
    overlap: int,
    height: int,
    width: int,
) -> "RequestError | None":
    """Refusal of a request whose model work (tiles x steps at the measured speed) exceeds `budget_s`,
    saying the largest square image at these steps and the most steps at this size that fit; else None."""
    from s2o_platform.geo.blending import largest_side_within

    cost_s = tiles * steps * seconds_per_tile_step
    if cost_s <= budget_s:
        return None
    fit_tiles = int(budget_s / (steps * seconds_per_tile_step))
    side = largest_side_within(fit_tiles, tile, overlap)
    fit_steps = int(budget_s / (tiles * seconds_per_tile_step))
    size_hint = (
        f"an image of at most {side}x{side} px at {steps} step(s)" if side else f"no image at {steps} step(s)"
    )
    steps_hint = (
        f"at most {fit_steps} step(s) at this size" if fit_steps >= 1 else "no step count at this size"
    )
    return RequestError(
        413,
        "too_costly",
        f"the image is {width}x{height} px = {tiles} tiles x {steps} step(s), about {cost_s:.1f} s of "
        f"model time at this replica's measured {1000 * seconds_per_tile_step:.1f} ms per tile-step; the "
        f"limit is {budget_s:g} s: send {size_hint}, or {steps_hint} (or use `s2o translate` for scenes)",
    )


@serve.deployment(
    name=DEPLOYMENT,
    # Defaults; serve/config.yaml restates them for `serve deploy` and KubeRay.
    max_ongoing_requests=32,
    max_queued_requests=64,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16},
    health_check_period_s=10,
)
class SarTranslator:
    """A model replica: prices, decodes, translates and encodes one request (called by SarGateway)."""

    def __init__(self, settings: dict[str, Any]):
        import ray

        from s2o_platform.inference import LoadedModel, resolve_sampler_for

        self.settings = ServeSettings(**settings)
        s = self.settings
        reserved = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)) or 1
        self.model = LoadedModel(
            s.model,
            device=s.device,
            dtype=s.dtype,
            steps=s.steps,
            seed=s.seed,
            batch_size=s.model_batch_tiles,
            threads=s.torch_threads or reserved,
            compile=s.compile,
        )
        # One long-lived thread runs every forward pass: the event loop stays free, and torch's OpenMP
        # team lives in one thread instead of being rebuilt in whichever pool thread comes next.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s2o-model")
        self.metadata = self.model.bundle.metadata
        self.tile = self.metadata.tile_size
        self.overlap = self.tile // 4 if s.overlap is None else min(s.overlap, self.tile - 1)
        self.sampler, self.default_steps = resolve_sampler_for(self.metadata, s.model, None, s.steps)
        self.train_timesteps = int((self.model.bundle.scheduler_config or {}).get("num_train_timesteps", 1))
        self.metrics = Metrics(gateway=False)
        self.runner = CoalescingRunner(
            self._run_group,
            s.max_batch_size,
            self.executor,
            on_run=self._observe_group,
            max_weight=s.model_batch_tiles,
        )
        self.reported_dropped = 0
        self.pass_started: float | None = None
        # Ready only after real forward passes: a replica that cannot translate never takes traffic. The
        # second, timed pass (the first pays one-time costs) gives admission its first speed figure. Both take
        # the fewest steps the sampler allows: the figure is per network call, and at the paper size on a CPU
        # the default steps made start-up minutes long (8 tiles x 4 steps at ~4 s a call).
        probe = np.zeros(
            (min(SPEED_SAMPLE_TILES, s.model_batch_tiles), self.metadata.sar_channels, self.tile, self.tile),
            np.float32,
        )
        warm = self.executor.submit(self.model.translate, probe[:1], "warm-up", steps=1).result()
        started = time.perf_counter()
        self.executor.submit(self.model.translate, probe, "speed", steps=1).result()
        self.seconds_per_tile_step = (time.perf_counter() - started) / (len(probe) * self._network_calls(1))
        # The measured speed follows real passes, within a band around the start-up figure: neighbours' load may
        # slow passes, but a burst of decode work must not make admission refuse what the replica can do.
        self.speed_band = (self.seconds_per_tile_step / 2, self.seconds_per_tile_step * 3)
        self.ready = bool(np.isfinite(warm).all())

    def check_health(self) -> None:
        """Serve's periodic replica health check: the model produced finite values, and no forward pass
        has run for longer than many times the whole request budget (a stuck model thread)."""
        if not self.ready:
            raise RuntimeError("the model's warm-up forward pass did not produce finite values")
        running = self.pass_started
        if (
            running is not None
            and time.perf_counter() - running > 10 * self.settings.max_request_model_s + 60
        ):
            raise RuntimeError(
                f"a forward pass has run for {time.perf_counter() - running:.0f} s: the model thread is stuck"
            )

    async def readiness(self) -> dict[str, Any]:
        """Whether this replica can take work now: ready, and its waiting work fits the request budget."""
        backlog_s = self.backlog_s()
        busy = backlog_s > self.settings.max_request_model_s
        return {
            "ready": self.ready and not busy,
            "status": "busy" if busy else ("ready" if self.ready else "not ready"),
            "backlog_s": round(backlog_s, 3),
            "pending_tiles": sum(self.runner.pending_weight().values()),
            "dropped_tiles": self.runner.dropped_weight,
        }

    def backlog_s(self) -> float:
        # the runner's keys are (steps, samples per tile); its weights count each tile's samples already
        pending = self.runner.pending_weight().items()
        return (
            sum(weight * self._network_calls(steps) for (steps, _), weight in pending)
            * self.seconds_per_tile_step
        )

    async def info(self) -> dict[str, Any]:
        """What a client needs to form requests (no server paths)."""
        m, s = self.metadata, self.settings
        return {
            "stage": m.stage,
            "tile_size": m.tile_size,
            "sar_channels": m.sar_channels,
            "sampler": self.sampler,
            "default_steps": self.default_steps,
            "allowed_steps": _allowed_steps(self.sampler, m.sampler.max_steps),
            "overlap": self.overlap,
            "max_image_side": s.max_image_side,
            "max_body_bytes": s.max_body_bytes,
            "max_decode_bytes": s.max_decode_bytes,
            "max_request_model_s": s.max_request_model_s,
            "max_uncertainty_samples": s.max_uncertainty_samples if self.sampler != "direct" else 0,
            "model_batch_tiles": s.model_batch_tiles,
            "seconds_per_tile_step": round(self.seconds_per_tile_step, 6),
            "dtype": self.model.dtype_name,
            "model_card": m.model_card,
        }

    async def translate(
        self, body: bytes, kind: str, steps: "int | None", fmt: str, uncertainty: int = 0
    ) -> Answer:
        try:
            return await self._translate(body, kind, steps, fmt, uncertainty)
        except RequestError as err:
            return Answer(err.status, error=err.to_json())

    async def _translate(
        self, body: bytes, kind: str, asked_steps: "int | None", fmt: str, samples: int
    ) -> Answer:
        from s2o_platform.geo.blending import cut_image, mosaic_image, tile_count

        s = self.settings
        n_steps = self._steps(asked_steps)
        if samples and self.sampler == "direct":
            raise RequestError(
                422,
                "no_uncertainty",
                f"the served {self.metadata.stage} model is deterministic (one forward pass, no noise to "
                "sample): it has no uncertainty; ask without ?uncertainty, or serve a student bundle",
            )
        header = await self._offload(
            len(body) > INLINE_BYTES,
            read_header,
            body,
            kind,
            self.metadata.sar_channels,
            s.max_image_side,
            s.max_decode_bytes,
        )
        tiles_needed = tile_count(header.height, header.width, self.tile, self.overlap)
        # K samples per tile cost K tiles' forward passes: priced as K times the tiles
        calls = self._network_calls(n_steps) * max(samples, 1)
        refusal = admission_error(
            tiles_needed,
            calls,
            self.seconds_per_tile_step,
            s.max_request_model_s,
            self.tile,
            self.overlap,
            header.height,
            header.width,
        )
        if refusal is not None:
            raise refusal
        # Work already waiting counts too: many requests that each fit must not queue more than the budget.
        backlog_s = self.backlog_s()
        if backlog_s + tiles_needed * calls * self.seconds_per_tile_step > s.max_request_model_s:
            raise RequestError(
                503,
                "busy",
                f"this replica has {backlog_s:.1f} s of work waiting; with this request's it would "
                f"exceed {s.max_request_model_s:g} s: retry after Retry-After seconds",
            )
        large = header.height * header.width > INLINE_PIXELS or len(body) > INLINE_BYTES
        t0 = time.perf_counter()
        image = await self._offload(
            large,
            decode_sar,
            body,
            kind,
            self.metadata.sar_normalization,
            self.metadata.sar_channels,
            s.max_image_side,
            s.max_decode_bytes,
            header,
        )
        t1 = time.perf_counter()
        tiles, positions = await self._offload(large, cut_image, image.values, self.tile, self.overlap)
        # The request's noise is seeded by its own bytes and steps, tile by tile: the answer does not depend
        # on which other requests share a forward pass, and a retried request gets the same answer.
        digest = await self._offload(len(body) > INLINE_BYTES, lambda: hashlib.sha256(body).hexdigest()[:16])
        keys = [f"{digest}-{n_steps}-{i}" for i in range(len(tiles))]
        per_tile = max(samples, 1)  # forward-pass tiles per image tile
        chunk = max(1, s.model_batch_tiles // per_tile)
        starts = range(0, len(tiles), chunk)
        results = await self.runner.submit(
            [((n_steps, samples), (tiles[a : a + chunk], keys[a : a + chunk])) for a in starts],
            weights=[len(tiles[a : a + chunk]) * per_tile for a in starts],
            turns=list(range(len(starts))),
        )
        predictions = np.concatenate([out for out, _, _ in results])  # (N, 3 or 4: RGB + spread, T, T)
        model_s = sum(seconds for _, seconds, _ in results)
        merged = max(count for _, _, count in results)
        t2 = time.perf_counter()
        blended = await self._offload(
            large, mosaic_image, predictions, positions, image.height, image.width, self.overlap
        )
        optical, spread = blended[:3], (blended[3] if samples else None)
        big_out = optical.size > INLINE_BYTES
        if fmt == "tiff":
            content, media = (
                await self._offload(big_out, encode_tiff, optical, image.crs_wkt, image.transform, spread),
                "image/tiff",
            )
        else:
            content, media = await self._offload(big_out, encode_png, optical), "image/png"
        t3 = time.perf_counter()
        # Server-Timing: where the replica's time went (a pass's model time is shared by its requests)
        timing = (
            f"decode;dur={1000 * (t1 - t0):.1f}, batch;dur={1000 * (t2 - t1):.1f}, model;dur={1000 * model_s:.1f}, "
            f"encode;dur={1000 * (t3 - t2):.1f}"
        )
        headers = {
            "X-S2O-Steps": str(n_steps),
            "X-S2O-Tiles": str(len(tiles)),
            "X-S2O-SAR-Scale": image.scale,
            "X-S2O-Batch-Requests": str(merged),
            "Server-Timing": timing,
        }
        if spread is not None:
            headers["X-S2O-Uncertainty-Samples"] = str(samples)
            headers["X-S2O-Uncertainty-Mean"] = f"{float(uncertainty_levels(spread).mean()):.3f}"
        return Answer(200, content, media, headers)

    @staticmethod
    async def _offload(large: bool, fn, *args):
        """Large images are checked, decoded and encoded in a worker thread (the event loop keeps serving);
        small ones inline, where a thread hop would cost more than the work."""
        return await asyncio.to_thread(fn, *args) if large else fn(*args)

    def _steps(self, asked: "int | None") -> int:
        from s2o_platform.bundle import BundleError
        from s2o_platform.inference import resolve_sampler_for

        try:
            n = resolve_sampler_for(self.metadata, "the served model", None, asked)[1]
        except BundleError as err:
            raise RequestError(422, "bad_steps", str(err)) from None
        if self.sampler == "ddim" and n > self.train_timesteps:
            raise RequestError(
                422, "bad_steps", f"DDIM takes 1..{self.train_timesteps} steps; {n} was asked for"
            )
        return n

    def _network_calls(self, n_steps: int) -> int:
        """Network calls per tile at `n_steps`: what admission prices (DDPM runs its whole schedule whatever is asked)."""
        return self.train_timesteps if self.sampler == "ddpm" else n_steps

    def _observe_group(self, chunks: list) -> None:
        self.metrics.batch_requests.observe(len(chunks))
        self.metrics.batch_tiles.observe(sum(len(tiles) for tiles, _ in chunks))
        dropped = self.runner.dropped_weight - self.reported_dropped
        if dropped:
            self.metrics.dropped_tiles.inc(dropped)
            self.reported_dropped += dropped
            log.info("dropped %d tiles of requests whose callers went away", dropped)

    def _run_group(self, chunks: list, key: "tuple[int, int]") -> list:
        """One forward pass over chunks of several requests with the same step count and samples per tile (model
        thread). With samples, each tile's output is its RGB mean and its spread as a fourth channel."""
        n_steps, samples = key
        self.pass_started = started = time.perf_counter()
        try:
            tiles = np.concatenate([t for t, _ in chunks])
            keys = [k for _, chunk_keys in chunks for k in chunk_keys]
            if samples:
                optical, spread = self.model.run_tiles_with_uncertainty(
                    tiles, self.model.seed, samples, keys=keys, steps=n_steps
                )
                out = np.concatenate([optical, spread[:, None]], axis=1)
            else:
                out = self.model.translate(tiles, "pass", steps=n_steps, keys=keys)
        finally:
            self.pass_started = None
        seconds = time.perf_counter() - started
        if len(tiles) >= SPEED_SAMPLE_TILES:  # follow the replica's real speed (load, thermal, neighbours)
            observed = seconds / (len(tiles) * max(samples, 1) * self._network_calls(n_steps))
            low, high = self.speed_band
            self.seconds_per_tile_step = min(
                high, max(low, 0.7 * self.seconds_per_tile_step + 0.3 * observed)
            )
        bounds = np.cumsum([0] + [len(t) for t, _ in chunks])
        return [(out[a:b], seconds, len(chunks)) for a, b in zip(bounds[:-1], bounds[1:])]


async def read_body(request: Request, max_bytes: int, total_s: float, chunk_s: float) -> bytes:
    """The body, refused as soon as it is known to exceed `max_bytes` (by Content-Length or while
    streaming), or with 408 when it takes longer than `total_s` in all or pauses longer than `chunk_s`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, "too_large", f"the body is {declared} bytes; the limit is {max_bytes}")
    chunks, size = [], 0
    deadline = time.monotonic() + total_s
    stream = request.stream().__aiter__()
    too_slow = RequestError(
        408, "body_timeout", f"the body did not arrive within {total_s:g} s; send it in one go"
    )
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise too_slow
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout=min(chunk_s, left))
        except StopAsyncIteration:
            break
        except ClientDisconnect:
            raise RequestError(
                400, "client_disconnected", f"the client went away after {size} bytes of its body"
            ) from None
        except asyncio.TimeoutError:
            if left < chunk_s:
                raise too_slow from None
            raise RequestError(
                408,
                "body_timeout",
                f"the body stalled (nothing for {chunk_s:g} s, {size} bytes received); send it in one go",
            ) from None
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, "too_large", f"the body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _unavailable(detail: str) -> JSONResponse:
    return JSONResponse(
        {"error": "unavailable", "detail": detail},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def _error_kind(response: JSONResponse) -> "str | None":
    import json

    try:
        return json.loads(response.body).get("error")
    except (ValueError, AttributeError):
        return None


@serve.deployment(
    name=GATEWAY,
    max_ongoing_requests=256,
    max_queued_requests=256,
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
)
@serve.ingress(api)
class SarGateway:
    """The HTTP ingress: cheap checks, bounded body reads, and clean answers when replicas fail."""

    def __init__(self, translator, settings: dict[str, Any]):
        self.translator = translator
        self.settings = ServeSettings(**settings)
        self.metrics = Metrics(gateway=True)

    async def _readiness(self) -> "dict[str, Any] | None":
        """A model replica's readiness, or None when none answers within the deadline."""
        try:
            return await asyncio.wait_for(self.translator.readiness.remote(), timeout=READINESS_DEADLINE_S)
        except Exception:  # noqa: BLE001 - timeout, no replica, replica died: all mean "cannot take work now"
            return None

    async def _a_replica_is_ready(self) -> bool:
        state = await self._readiness()
        return bool(state and state["ready"])

    @api.get("/", response_class=HTMLResponse)
    async def page(self):
        """A page to try the model by hand: choose a SAR PNG or GeoTIFF and the steps, see the translation beside
        it with the latency and the Server-Timing breakdown (serving/page.py; no external resources)."""
        from s2o_platform.serving.page import PAGE

        return HTMLResponse(PAGE)

    @api.get("/healthz")
    async def healthz(self):
        """200 when a model replica answers within the deadline and can take work now; else 503."""
        state = await self._readiness()
        if state is None:
            return JSONResponse(
                {
                    "status": "unavailable",
                    "detail": f"no model replica answered within {READINESS_DEADLINE_S:g} s",
                },
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        body = {k: state[k] for k in ("status", "backlog_s", "pending_tiles", "dropped_tiles")}
        return (
            body
            if state["ready"]
            else JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        )

    @api.get("/v1/model")
    async def model_info(self):
        try:
            return await asyncio.wait_for(self.translator.info.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - as in healthz
            return _unavailable("no model replica answered; retry after Retry-After seconds")

    @api.post("/v1/translate")
    async def translate(
        self,
        request: Request,
        steps: "str | None" = Query(
            None, description="sampling steps (student: 1..the bundle's max_steps; GET /v1/model lists them)"
        ),
        output_format: "str | None" = Query(None, alias="format", description="png (default) or tiff"),
        uncertainty: "str | None" = Query(
            None,
            description="K samples per tile (2..max_uncertainty_samples of GET /v1/model): the answer is their "
            "mean, X-S2O-Uncertainty-Mean their mean per-pixel spread in 8-bit levels, and a TIFF answer "
            "carries the spread as a fourth band; costs K forward passes per tile",
        ),
    ):
        started = time.perf_counter()
        try:
            response = await self._translate(request, steps, output_format, uncertainty)
        except RequestError as err:
            response = JSONResponse(err.to_json(), status_code=err.status)
        except Exception:  # noqa: BLE001 - reported with an id; the detail stays in the log
            error_id = uuid.uuid4().hex[:12]
            log.exception("request failed, error id %s", error_id)
            response = JSONResponse(
                {
                    "error": "internal",
                    "detail": f"unexpected server error; quote error id {error_id}",
                    "error_id": error_id,
                },
                status_code=500,
            )
        if response.status_code >= 400:
            kind = _error_kind(response)
            self.metrics.errors.inc(tags={"kind": kind or "unknown"})
        self.metrics.requests.inc(tags={"status": str(response.status_code)})
        self.metrics.latency.observe(time.perf_counter() - started)
        return response

    async def _translate(
        self,
        request: Request,
        raw_steps: "str | None",
        raw_format: "str | None",
        raw_uncertainty: "str | None" = None,
    ):
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import (
            BackPressureError,
            DeploymentUnavailableError,
            ReplicaUnavailableError,
        )

        s = self.settings
        n_steps = parse_steps(raw_steps)
        fmt = parse_format(raw_format)
        samples = parse_uncertainty(raw_uncertainty, s.max_uncertainty_samples)
        kind = media_kind(request.headers.get("content-type"))
        body = await read_body(request, s.max_body_bytes, s.body_timeout_s, s.body_chunk_timeout_s)
        check_body(body, s.max_body_bytes)
        for attempt in (1, 2):
            try:
                answer: Answer = await self.translator.translate.remote(body, kind, n_steps, fmt, samples)
                break
            except BackPressureError:
                return _unavailable("every model replica is busy; retry after Retry-After seconds")
            except (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError) as err:
                log.warning(
                    "model replica lost during a request (attempt %d): %s", attempt, type(err).__name__
                )
                # Retried once, only when a replica can take it now: waiting for a replacement replica (model
                # loading takes many seconds) would hold the client past its timeout instead of telling it.
                if attempt == 2 or not await self._a_replica_is_ready():
                    return _unavailable(
                        "the model replica was lost during the request; retry after Retry-After seconds"
                    )
        if answer.status == 503:
            return JSONResponse(answer.error, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        if answer.status >= 400:
            return JSONResponse(answer.error, status_code=answer.status)
        return Response(content=answer.content, media_type=answer.media_type, headers=answer.headers)


def application(settings: ServeSettings, deployment_options: "dict[str, dict[str, Any]] | None" = None):
    """The bound application for `serve.run`: SarGateway in front of SarTranslator, each with its
    deployment options (as in serve/config.yaml, by deployment name) applied."""
    options = deployment_options or {}
    unknown = set(options) - set(DEPLOYMENTS)
    if unknown:
        raise ValueError(f"unknown deployment(s) {sorted(unknown)}; the application has {list(DEPLOYMENTS)}")
    translator = SarTranslator.options(**options[DEPLOYMENT]) if options.get(DEPLOYMENT) else SarTranslator
    gateway = SarGateway.options(**options[GATEWAY]) if options.get(GATEWAY) else SarGateway
    args = settings.model_dump()
    return gateway.bind(translator.bind(args), args)


def build_app(args: dict[str, Any]):
    """Application builder for serve/config.yaml's `import_path` (`serve run` / `serve deploy` / KubeRay)."""
    from s2o_platform.bundle import check_bundle

    settings = settings_from_args(args)
    check_bundle(settings.model)  # a missing or broken bundle is said here, before replicas start
    return application(settings)
