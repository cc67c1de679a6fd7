"""Ray Serve for real on the shared local cluster: the application from serve/config.yaml with an
(untrained) student bundle, HTTP on loopback. Real SAR PNGs and a synthetic GeoTIFF, every kind of bad
input, Prometheus counters, and overload shed with 503 + Retry-After by a second, deliberately tiny app."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import rasterio
import requests
import yaml
from PIL import Image

from s2o_platform.data.store import read_metadata
from s2o_platform.serving.runner import free_port, plan_serving, start_serving
from s2o_platform.serving.settings import DEFAULT_CONFIG, ServeConfigError, load_serve_config
from s2o_platform.train.untrained import write_untrained_bundles
from tests.fixtures import TINY_CONFIGS, png_bytes, tiff_bytes
from tests.serving.helpers import post

pytestmark = pytest.mark.ray
MAX_SIDE = 512


@pytest.fixture(scope="module")
def student(synth_store_32, tmp_path_factory):
    return write_untrained_bundles(
        TINY_CONFIGS, tmp_path_factory.mktemp("serve-bundles"), read_metadata(synth_store_32)
    )["student"]


@pytest.fixture(scope="module")
def server(ray_cluster, student):
    from ray import serve

    plan = plan_serving(
        DEFAULT_CONFIG,
        model=student,
        port=free_port(),
        overrides={"max_image_side": MAX_SIDE, "max_body_mb": 1, "dtype": "bf16"},
    )  # as `s2o serve --dtype bf16`
    url = start_serving(plan)
    yield url
    serve.shutdown()


def test_config_file_is_a_valid_serve_deploy_schema():
    config = load_serve_config(DEFAULT_CONFIG)
    app = config.applications[0]
    assert app.import_path == "s2o_platform.serving.app:build_app"
    deployment = app.deployments[0]
    assert (
        deployment.max_queued_requests > 0 and deployment.max_ongoing_requests >= app.args["max_batch_size"]
    )
    assert deployment.autoscaling_config["max_replicas"] >= deployment.autoscaling_config["min_replicas"]
    assert (
        deployment.backpressure_config.retry_after_s > 0
        and deployment.backpressure_config.status_code in (429, 503)
    )
    gateway = app.deployments[1]
    assert [d.name for d in app.deployments] == ["SarTranslator", "SarGateway"]
    # slow clients wait in the gateway's many cheap slots, never in the model replicas'
    assert (
        gateway.max_ongoing_requests >= 4 * deployment.max_ongoing_requests
        and gateway.ray_actor_options.num_cpus == 0
    )
    # a request that is admitted, and its body, fit well inside the HTTP request timeout
    timeout = config.http_options.request_timeout_s
    assert app.args["max_request_model_s"] <= timeout / 2 and app.args["body_timeout_s"] <= timeout / 2


def test_bad_config_and_missing_bundle_are_refused_before_start(tmp_path, student):
    broken = tmp_path / "config.yaml"
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["applications"][0]["deployments"][0]["max_ongoing_requests"] = "many"
    broken.write_text(yaml.safe_dump(raw))
    with pytest.raises(ServeConfigError, match="not a valid Serve config"):
        plan_serving(broken, model=student)
    with pytest.raises(ServeConfigError, match="no inference bundle"):
        plan_serving(DEFAULT_CONFIG, model=str(tmp_path / "nowhere"))
    with pytest.raises(ServeConfigError, match="max_batch_size"):
        plan_serving(DEFAULT_CONFIG, model=student, overrides={"max_batch_size": 0})
    with pytest.raises(ServeConfigError, match="dtype"):
        plan_serving(DEFAULT_CONFIG, model=student, overrides={"dtype": "fp8"})


def test_health_model_and_docs(server):
    health = requests.get(f"{server}/healthz", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ready"
    info = requests.get(f"{server}/v1/model", timeout=30).json()
    assert info["stage"] == "student" and info["tile_size"] == 32 and info["sampler"] == "lcm"
    assert info["allowed_steps"] == list(range(1, 9)) and info["default_steps"] in info["allowed_steps"]
    assert info["max_image_side"] == MAX_SIDE and info["dtype"] == "bf16"
    assert requests.get(f"{server}/docs", timeout=30).status_code == 200
    assert "/v1/translate" in requests.get(f"{server}/openapi.json", timeout=30).json()["paths"]


def test_real_sen12_sar_pngs_translate(server, real_data):
    paths = sorted((real_data / "sar").glob("*.png"))[:3]
    assert paths, f"no SAR PNGs under {real_data / 'sar'}"
    for path in paths:
        response = post(server, path.read_bytes(), query="?steps=1")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        assert response.headers["x-s2o-sar-scale"] == "uint8" and response.headers["x-s2o-steps"] == "1"
        image = Image.open(io.BytesIO(response.content))
        assert image.mode == "RGB" and image.size == Image.open(path).size


def test_geotiff_keeps_its_georeference(server):
    db = np.random.default_rng(3).uniform(-22, -2, (1, 48, 80)).astype(np.float32)
    response = post(server, tiff_bytes(db), "image/tiff", "?format=tiff&steps=2")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/tiff" and response.headers["x-s2o-sar-scale"] == "db"
    with rasterio.io.MemoryFile(response.content) as memfile, memfile.open() as ds:
        assert (ds.count, ds.width, ds.height, ds.dtypes[0]) == (3, 80, 48, "uint8")
        assert ds.crs.to_epsg() == 32631
        assert tuple(ds.transform)[:6] == (10.0, 0.0, 600_000.0, 0.0, -10.0, 4_800_000.0)
    as_png = post(server, tiff_bytes(db), "image/tiff")
    assert as_png.status_code == 200 and Image.open(io.BytesIO(as_png.content)).size == (80, 48)


def test_uncertainty_comes_as_a_fourth_tiff_band_and_a_header(server):
    """?uncertainty=K: K samples per tile in the replica's forward passes; the TIFF answer carries their spread as
    a described fourth band (data, not alpha), the header its mean; a retried request gets the same answer."""
    db = np.random.default_rng(5).uniform(-22, -2, (1, 40, 72)).astype(np.float32)
    response = post(server, tiff_bytes(db), "image/tiff", "?format=tiff&steps=2&uncertainty=3")
    assert response.status_code == 200, response.text
    assert response.headers["x-s2o-uncertainty-samples"] == "3"
    with rasterio.io.MemoryFile(response.content) as memfile, memfile.open() as ds:
        assert (ds.count, ds.width, ds.height, ds.dtypes[3]) == (4, 72, 40, "uint8")
        assert ds.descriptions[3].startswith("uncertainty") and ds.colorinterp[3].name == "undefined"
        assert ds.crs.to_epsg() == 32631
        spread = ds.read(4)
    assert float(response.headers["x-s2o-uncertainty-mean"]) == pytest.approx(spread.mean(), abs=1e-3)
    assert spread.mean() > 0  # an untrained student's samples differ
    again = post(server, tiff_bytes(db), "image/tiff", "?format=tiff&steps=2&uncertainty=3")
    assert again.content == response.content
    plain = post(server, tiff_bytes(db), "image/tiff", "?format=tiff&steps=2")
    assert "x-s2o-uncertainty-mean" not in plain.headers
    with rasterio.io.MemoryFile(plain.content) as memfile, memfile.open() as ds:
        assert ds.count == 3
    as_png = post(server, tiff_bytes(db), "image/tiff", "?steps=2&uncertainty=2")
    assert as_png.status_code == 200 and "x-s2o-uncertainty-mean" in as_png.headers
    for bad in ("1", "99", "many"):
        refused = post(server, tiff_bytes(db), "image/tiff", f"?uncertainty={bad}")
        assert refused.status_code == 422 and refused.json()["error"] == "bad_uncertainty", bad


def test_the_page_translates_an_uploaded_png_in_a_real_browser(server, browser, tmp_path):
    """GET / in headless Chromium: the steps come from /v1/model, a SAR PNG is chosen in the form and uploaded,
    the translation loads at the input's size beside the SAR preview, the timing table fills in; a file the API
    refuses shows its JSON error on the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from tests.browser import image_state

    sar = tmp_path / "sar.png"
    sar.write_bytes(png_bytes(np.random.default_rng(7).integers(0, 255, (72, 104), dtype=np.uint8)))
    browser.get(server + "/")
    steps = WebDriverWait(browser, 60).until(
        lambda d: len(Select(d.find_element(By.ID, "steps")).options) > 0 and d.find_element(By.ID, "steps")
    )
    assert [o.text for o in Select(steps).options] == [str(n) for n in range(1, 9)]
    browser.find_element(By.ID, "file").send_keys(str(sar))
    Select(steps).select_by_value("2")
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 120).until(
        lambda d: (
            d.find_element(By.ID, "result").get_attribute("data-loaded") == "true"
            or d.find_element(By.ID, "error").text
        )
    )
    assert browser.find_element(By.ID, "error").text == ""
    [result] = image_state(browser, "result")
    assert result["complete"] and (result["width"], result["height"]) == (104, 72)
    [preview] = image_state(browser, "sar")
    assert (preview["width"], preview["height"]) == (104, 72)
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("HTTP 200") and "2 step(s)" in status
    timing = browser.find_element(By.ID, "timing").text
    assert "server: model" in timing and "latency in the browser" in timing
    shot = tmp_path / "result.png"
    assert browser.find_element(By.ID, "result").screenshot(str(shot))
    with Image.open(shot) as image:
        assert np.asarray(image.convert("RGB")).astype(float).std() > 5  # a translation, not a blank image
    browser.save_screenshot(str(tmp_path / "page.png"))
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    browser.find_element(By.ID, "go").click()
    error = WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "error").text)
    assert error.startswith("not_an_image: "), error  # the API's JSON error, kind and detail
    assert browser.find_element(By.ID, "status").text.startswith("HTTP 4")


def _bad_inputs():
    rng = np.random.default_rng(0)
    good_png = png_bytes(rng.integers(0, 255, (64, 64), dtype=np.uint8))
    good_tiff = tiff_bytes(rng.normal(-10, 3, (1, 128, 128)).astype(np.float32))
    return {
        "zero bytes": (b"", "image/png", "", 400, "empty_body"),
        "not an image": (b"this is not a picture at all", "image/png", "", 400, "not_an_image"),
        "truncated png": (good_png[: len(good_png) // 2], "image/png", "", 400, "corrupt_image"),
        "truncated tiff": (good_tiff[: len(good_tiff) // 3], "image/tiff", "", 400, "corrupt_image"),
        "rgb png": (png_bytes(np.zeros((64, 64, 3), np.uint8)), "image/png", "", 422, "wrong_bands"),
        "two-band tiff": (
            tiff_bytes(np.zeros((2, 64, 64), np.float32)),
            "image/tiff",
            "",
            422,
            "wrong_bands",
        ),
        "nan tiff": (
            tiff_bytes(np.full((1, 64, 64), np.nan, np.float32)),
            "image/tiff",
            "",
            422,
            "no_valid_pixels",
        ),
        "body over the limit": (b"\x89PNG" + bytes(1024 * 1024 + 10), "image/png", "", 413, "too_large"),
        "image over the size limit": (
            png_bytes(np.zeros((MAX_SIDE + 1, 64), np.uint8)),
            "image/png",
            "",
            413,
            "too_large",
        ),
        "unsupported content type": (good_png, "text/plain", "", 415, "unsupported_media_type"),
        "steps not a number": (good_png, "image/png", "?steps=four", 422, "bad_steps"),
        "steps out of range": (good_png, "image/png", "?steps=9", 422, "bad_steps"),
        "steps zero": (good_png, "image/png", "?steps=0", 422, "bad_steps"),
        "unknown format": (good_png, "image/png", "?format=gif", 422, "bad_format"),
    }


def test_bad_inputs_get_4xx_json_and_the_replica_survives(server):
    for name, (body, content_type, query, status, kind) in _bad_inputs().items():
        response = post(server, body, content_type, query)
        assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
        assert response.json()["error"] == kind, name
        assert response.json()["detail"], name
    assert requests.get(f"{server}/healthz", timeout=30).status_code == 200
    good = png_bytes(np.random.default_rng(1).integers(0, 255, (32, 32), dtype=np.uint8))
    assert post(server, good).status_code == 200


def test_concurrent_requests_are_batched_and_counted(server):
    import ray

    tile = png_bytes(np.random.default_rng(2).integers(0, 255, (32, 32), dtype=np.uint8))
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: post(server, tile, query="?steps=1"), range(32)))
    assert [a.status_code for a in answers] == [200] * 32
    # Requests that waited while the model was busy shared a forward pass (the CoalescingRunner merges them).
    merged = [int(a.headers["X-S2O-Batch-Requests"]) for a in answers]
    assert max(merged) > 1 and max(merged) <= 16, merged
    # A refused request in this test too, so the error counter does not rest on another test's traffic.
    assert post(server, tile, query="?steps=99").status_code == 422
    port = ray.nodes()[0]["MetricsExportPort"]
    # metric -> (label it must carry, least total that proves our traffic was counted)
    wanted = {
        "ray_s2o_serve_requests_total": ('status="200"', 32),
        "ray_s2o_serve_errors_total": ('kind="bad_steps"', 1),
        "ray_s2o_serve_batch_requests_count": ("", 1),
    }
    deadline, resend_at = time.time() + 90, time.time() + 30
    while True:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        found = {name: _metric_total(text, name, label) for name, (label, _) in wanted.items()}
        counted = all(found[name] >= least for name, (_, least) in wanted.items())
        if counted or time.time() > deadline:
            break
        if found["ray_s2o_serve_errors_total"] == 0 and time.time() > resend_at:
            # Workers push counter increments to Ray's metrics agent, and a lost push is not made up later: in one
            # CI run the bad-steps count of an earlier request never arrived. A fresh refusal gets a fresh push.
            assert post(server, tile, query="?steps=99").status_code == 422
            resend_at += 20
        time.sleep(2)
    assert counted, found
    assert (
        "ray_serve_num_http_requests" in text or "ray_serve_deployment_request_counter" in text
    )  # Serve's own


def _metric_total(text: str, name: str, label: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and label in line
    )


def test_overload_is_shed_with_503_and_retry_after(server, student):
    from ray import serve

    from s2o_platform.serving.app import application
    from s2o_platform.serving.settings import ServeSettings

    tiny = application(
        ServeSettings(model=student, max_batch_size=1),
        {
            "SarTranslator": {
                "max_ongoing_requests": 1,
                "max_queued_requests": 1,
                "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
            }
        },
    )
    serve.run(tiny, name="overload", route_prefix="/overload")
    url = server.rsplit("/", 1)[0] if server.endswith("/") else server
    url = f"{url}/overload"
    # 64 tiles: a request of a second or two, long enough for the others to arrive while it runs, short
    # enough that the one queued request finishes well inside the 60 s request timeout on a busy machine
    big = png_bytes(np.random.default_rng(4).integers(0, 255, (192, 192), dtype=np.uint8))
    try:
        # never a hang: every request is answered (200 or shed with 503) inside its own client timeout, which
        # raises requests.Timeout and fails the test otherwise
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda _: post(url, big, query="?steps=2", timeout=90), range(12)))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(503) >= 1 and statuses.count(200) >= 1, statuses
        assert all(
            r.headers.get("retry-after") == "1" and r.json()["error"] == "unavailable"
            for r in responses
            if r.status_code == 503
        )
        assert requests.get(f"{url}/healthz", timeout=30).status_code == 200
        assert post(url, big, query="?steps=1").status_code == 200
    finally:
        serve.delete("overload")
