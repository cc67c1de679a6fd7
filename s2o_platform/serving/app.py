"""The Ray Serve application: one FastAPI ingress deployment whose replicas each hold the model.

    POST /v1/translate?steps=N&format=png|tiff   body: the SAR image (image/png, image/jpeg, image/tiff)
    GET  /healthz                                ready once the model is loaded and a forward pass succeeded
    GET  /v1/model                               bundle metadata, allowed steps, limits
    GET  /docs                                   OpenAPI (FastAPI's default)

A request is checked and decoded (codec), cut into model tiles with overlap (geo.blending.cut_image),
and its tiles join a dynamic batch (`@serve.batch`) with other requests' tiles. Serve's batches go to
a CoalescingRunner: one model thread (the event loop keeps accepting requests), and every batch that
waited while it was busy is merged into its next forward pass (same step count, up to
max_batch_size requests), so the forward-pass size follows the load. Each request's tiles are then
blended back (mosaic_image) and encoded. Overload is shed by Serve itself:
`max_ongoing_requests` per replica plus `max_queued_requests` answer 503 + Retry-After
(serve/config.yaml). Bad input is a 4xx JSON answer {"error": kind, "detail": message}.
"""

# No `from __future__ import annotations`: FastAPI must see real types (Request) on the ingress methods.
import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from s2o_platform.serving.codec import (
    RequestError,
    check_body,
    decode_sar,
    encode_png,
    encode_tiff,
    media_kind,
    parse_format,
    parse_steps,
)
from s2o_platform.serving.coalescing import CoalescingRunner
from s2o_platform.serving.settings import ServeSettings, settings_from_args

DEPLOYMENT = "SarTranslator"
LATENCY_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
INLINE_BYTES = 64 * 1024  # bodies (and outputs, in values) below this are decoded/encoded on the event loop
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
#: Serve batches let through to the CoalescingRunner at once. High on purpose: a batch held back by
#: Serve's semaphore cannot be merged into the next forward pass.
MAX_PENDING_BATCHES = 64


class _DropBatchBoundWarning(logging.Filter):
    """Serve warns when max_batch_size * max_concurrent_batches > max_ongoing_requests, assuming each
    batch is a forward pass; here batches are merged, and max_batch_size bounds the merged pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "max_concurrent_batches" not in record.getMessage()

api = FastAPI(
    title="s2o-platform: SAR to optical translation",
    description="POST a SAR image to /v1/translate; get an optical-looking RGB image back.",
    version="1",
)


class Metrics:
    """Our counters, exported on Ray's Prometheus endpoint beside Serve's own (names get a `ray_` prefix)."""

    def __init__(self):
        from ray.util import metrics

        self.requests = metrics.Counter("s2o_serve_requests", "translate requests by HTTP status", tag_keys=("status",))
        self.errors = metrics.Counter("s2o_serve_errors", "refused or failed requests by kind", tag_keys=("kind",))
        self.latency = metrics.Histogram("s2o_serve_latency_s", "translate request latency inside the replica, s",
                                         boundaries=LATENCY_BOUNDARIES_S)
        self.batch_requests = metrics.Histogram("s2o_serve_batch_requests", "requests per dynamic batch", boundaries=BATCH_BOUNDARIES)
        self.batch_tiles = metrics.Histogram("s2o_serve_batch_tiles", "model tiles per dynamic batch", boundaries=BATCH_BOUNDARIES)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused as soon as it is known to exceed `max_bytes` (by Content-Length or while streaming)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, "too_large", f"the body is {declared} bytes; the limit is {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, "too_large", f"the body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _allowed_steps(sampler: str, default: int) -> "list[int] | str":
    from s2o_platform.diffusion.sampling import STUDENT_STEPS

    if sampler == "lcm":
        return list(STUDENT_STEPS)
    if sampler == "direct":
        return [1]
    return "any (a teacher; DDIM takes any step count, DDPM its full schedule)"


@serve.deployment(
    name=DEPLOYMENT,
    # Defaults; serve/config.yaml restates them for `serve deploy` and KubeRay.
    max_ongoing_requests=32,
    max_queued_requests=64,
    backpressure_config={"status_code": 503, "retry_after_s": 1},
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16},
    health_check_period_s=10,
)
@serve.ingress(api)
class SarTranslator:
    def __init__(self, settings: dict[str, Any]):
        import ray

        from s2o_platform.inference import LoadedModel, resolve_sampler_for

        self.settings = ServeSettings(**settings)
        s = self.settings
        reserved = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)) or 1
        self.model = LoadedModel(s.model, device=s.device, dtype=s.dtype, steps=s.steps, seed=s.seed, batch_size=s.model_batch_tiles,
                                 threads=s.torch_threads or reserved)
        # One long-lived thread runs every forward pass: the event loop stays free for HTTP, and torch's
        # OpenMP team lives in one thread instead of being rebuilt in whichever pool thread comes next.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s2o-model")
        self.metadata = self.model.bundle.metadata
        self.tile = self.metadata.tile_size
        self.overlap = self.tile // 4 if s.overlap is None else min(s.overlap, self.tile - 1)
        self.sampler, self.default_steps = resolve_sampler_for(self.metadata, s.model, None, s.steps)
        self.translate_batch.set_max_batch_size(s.max_batch_size)
        self.translate_batch.set_batch_wait_timeout_s(s.batch_wait_timeout_s)
        self.metrics = Metrics()
        self.runner = CoalescingRunner(self._run_group, s.max_batch_size, self.executor, on_run=self._observe_group)
        logging.getLogger("ray.serve").addFilter(_DropBatchBoundWarning())
        # Ready only after a real forward pass: a replica that cannot translate never takes traffic.
        probe = np.zeros((1, self.metadata.sar_channels, self.tile, self.tile), np.float32)
        warm = self.executor.submit(self.model.translate, probe, "warm-up").result()
        self.ready = bool(np.isfinite(warm).all())

    def check_health(self) -> None:
        """Serve's periodic replica health check."""
        if not self.ready:
            raise RuntimeError("the model's warm-up forward pass did not produce finite values")

    @api.get("/healthz")
    def healthz(self):
        if not self.ready:
            return JSONResponse({"status": "not ready"}, status_code=503)
        return {"status": "ready", "model": self.settings.model, "device": str(self.model.device), "dtype": self.model.dtype_name}

    @api.get("/v1/model")
    def model_info(self):
        m = self.metadata
        return {
            "name": self.settings.model.rstrip("/").split("/")[-1] or self.settings.model,
            "path": self.settings.model,
            "stage": m.stage,
            "tile_size": m.tile_size,
            "sar_channels": m.sar_channels,
            "sampler": self.sampler,
            "default_steps": self.default_steps,
            "allowed_steps": _allowed_steps(self.sampler, self.default_steps),
            "overlap": self.overlap,
            "max_image_side": self.settings.max_image_side,
            "max_body_bytes": self.settings.max_body_bytes,
            "max_batch_size": self.settings.max_batch_size,
            "device": str(self.model.device),
            "dtype": self.model.dtype_name,
            "model_card": m.model_card,
        }

    @api.post("/v1/translate")
    async def translate(self, request: Request, steps: str | None = Query(None, description="sampling steps (student: 1-8)"),
                        output_format: str | None = Query(None, alias="format", description="png (default) or tiff")):
        started = time.perf_counter()
        try:
            response = await self._translate(request, steps, output_format)
        except RequestError as err:
            self.metrics.errors.inc(tags={"kind": err.kind})
            response = JSONResponse(err.to_json(), status_code=err.status)
        except Exception as err:  # noqa: BLE001 - an unexpected failure is reported, and the replica stays up
            self.metrics.errors.inc(tags={"kind": "internal"})
            response = JSONResponse({"error": "internal", "detail": f"{type(err).__name__}: {err}"}, status_code=500)
        self.metrics.requests.inc(tags={"status": str(response.status_code)})
        self.metrics.latency.observe(time.perf_counter() - started)
        return response

    async def _translate(self, request: Request, raw_steps: str | None, raw_format: str | None) -> Response:
        s = self.settings
        n_steps = self._steps(parse_steps(raw_steps))
        fmt = parse_format(raw_format)
        kind = media_kind(request.headers.get("content-type"))
        body = await read_body(request, s.max_body_bytes)
        check_body(body, s.max_body_bytes)
        t0 = time.perf_counter()
        image = await self._offload(len(body) > INLINE_BYTES, decode_sar, body, kind, self.metadata.sar_normalization,
                                    self.metadata.sar_channels, s.max_image_side)
        t1 = time.perf_counter()
        from s2o_platform.geo.blending import cut_image, mosaic_image

        tiles, positions = cut_image(image.values, self.tile, self.overlap)
        predictions, model_s, merged = await self.translate_batch((tiles, n_steps))
        t2 = time.perf_counter()
        optical = mosaic_image(predictions, positions, image.height, image.width, self.overlap)
        large = optical.size > INLINE_BYTES
        if fmt == "tiff":
            content, media = await self._offload(large, encode_tiff, optical, image.crs_wkt, image.transform), "image/tiff"
        else:
            content, media = await self._offload(large, encode_png, optical), "image/png"
        t3 = time.perf_counter()
        # Server-Timing: where the replica's time went (the batch's model time is shared by its requests)
        timing = f"decode;dur={1000 * (t1 - t0):.1f}, batch;dur={1000 * (t2 - t1):.1f}, model;dur={1000 * model_s:.1f}, encode;dur={1000 * (t3 - t2):.1f}"
        headers = {"X-S2O-Steps": str(n_steps), "X-S2O-Tiles": str(len(tiles)), "X-S2O-SAR-Scale": image.scale,
                   "X-S2O-Batch-Requests": str(merged), "Server-Timing": timing}
        return Response(content=content, media_type=media, headers=headers)

    @staticmethod
    async def _offload(large: bool, fn, *args):
        """Large images are decoded/encoded in a worker thread (the event loop keeps serving); small ones
        inline, where a thread hop would cost more than the work."""
        return await asyncio.to_thread(fn, *args) if large else fn(*args)

    def _steps(self, asked: int | None) -> int:
        from s2o_platform.bundle import BundleError
        from s2o_platform.inference import resolve_sampler_for

        try:
            return resolve_sampler_for(self.metadata, self.settings.model, None, asked)[1]
        except BundleError as err:
            raise RequestError(422, "bad_steps", str(err)) from None

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01, max_concurrent_batches=MAX_PENDING_BATCHES)
    async def translate_batch(self, items: list[tuple[np.ndarray, int]]) -> list[tuple[np.ndarray, float, int]]:
        """Tiles of several requests -> their predictions, and their forward pass's model seconds and request count."""
        return await self.runner.submit([(n_steps, tiles) for tiles, n_steps in items])

    def _observe_group(self, tile_sets: list[np.ndarray]) -> None:
        self.metrics.batch_requests.observe(len(tile_sets))
        self.metrics.batch_tiles.observe(sum(len(tiles) for tiles in tile_sets))

    def _run_group(self, tile_sets: list[np.ndarray], n_steps: int) -> list[tuple[np.ndarray, float, int]]:
        """One forward pass over the tiles of several requests with the same step count (model thread)."""
        started = time.perf_counter()
        key = f"batch-{self.runner.calls}-{n_steps}"  # the runner counted this call before handing it over
        out = self.model.translate(np.concatenate(tile_sets), key, steps=n_steps)
        seconds = time.perf_counter() - started
        bounds = np.cumsum([0] + [len(tiles) for tiles in tile_sets])
        return [(out[a:b], seconds, len(tile_sets)) for a, b in zip(bounds[:-1], bounds[1:])]


def application(settings: ServeSettings, deployment_options: dict[str, Any] | None = None):
    """The bound application for `serve.run`, with deployment options (as in serve/config.yaml) applied."""
    deployment = SarTranslator.options(**deployment_options) if deployment_options else SarTranslator
    return deployment.bind(settings.model_dump())


def build_app(args: dict[str, Any]):
    """Application builder for serve/config.yaml's `import_path` (`serve run` / `serve deploy` / KubeRay)."""
    from s2o_platform.bundle import check_bundle

    settings = settings_from_args(args)
    check_bundle(settings.model)  # a missing or broken bundle is said here, before replicas start
    return application(settings)
