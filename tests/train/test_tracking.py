"""Experiment tracking with MLflow end to end: a real `mlflow server` on loopback (SQLite store, proxied
artefacts), real Ray Train + DeepSpeed training on the shared cluster, everything read back with MlflowClient."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s2o_platform.cli import app
from s2o_platform.config import TeacherConfig, load_config
from s2o_platform.serving.runner import free_port
from s2o_platform.tracking import RUN_FILE, flatten_params, metric_name, redact
from s2o_platform.train.launcher import run_training
from tests.fixtures import REPO_ROOT, SMALL_TEACHER_UNET, TINY_CONFIGS

REPO = REPO_ROOT
TINY_PRESET = TINY_CONFIGS / "teacher.yaml"
# The teacher e2e tests' small network, a few steps of a few tiles.
FAST = [
    *SMALL_TEACHER_UNET,
    "train.batch_size=4",
    "train.warmup_steps=2",
    "train.log_every_steps=2",
]
EXPERIMENT = "s2o-tracking-test"
MODEL_NAME = "s2o-tracking-teacher"


def cfg(*overrides):
    return load_config(TeacherConfig, TINY_PRESET, [*FAST, *overrides])


# -- pure helpers (no server, no Ray) ----------------------------------------------------------------


def test_params_are_flat_dotted_strings_within_mlflows_limit():
    flat = flatten_params(
        {
            "train": {"lr": 0.002, "betas": [0.9, 0.999], "autocast": "off"},
            "tracking": {"uri": None},
            "note": "x" * 7000,
        },
        limit=6000,
    )
    assert (
        flat["train.lr"] == "0.002"
        and flat["train.betas"] == "[0.9, 0.999]"
        and flat["train.autocast"] == "off"
    )
    assert flat["tracking.uri"] == "null"
    assert len(flat["note"]) == 6000 and flat["note"].endswith("...")
    assert metric_name("eval/pix2pix (1 step)/psnr") == "eval/pix2pix _1 step_/psnr"
    assert redact("https://user:secret@mlflow.example:5000/x") == "https://***@mlflow.example:5000/x"


def test_tracking_off_never_imports_mlflow(tmp_path):
    """Without a URI every call is a no-op and neither the tracker nor the training code imports mlflow."""
    code = (
        "import sys\n"
        "import s2o_platform.train.launcher, s2o_platform.train.harness\n"
        "from s2o_platform.tracking import Tracker, resolve_uri\n"
        "t = Tracker(resolve_uri(None))\n"
        "assert not t.enabled and t.start('x') is None and t.worker_spec() is None\n"
        "t.log_params({'a': 1}); t.log_metrics({'loss': 1.0}, 1); t.log_artifacts('.', 'b'); t.end()\n"
        "assert Tracker.attach(None).enabled is False\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'mlflow'], 'mlflow was imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_an_unreachable_server_is_one_warning_without_credentials(caplog):
    pytest.importorskip("mlflow")
    from s2o_platform.tracking import Tracker

    caplog.set_level(logging.WARNING, logger="s2o_platform.tracking")
    tracker = Tracker(f"http://alice:s3cret@127.0.0.1:{free_port()}")  # nothing listens there
    assert tracker.start("s2o-x") is None and not tracker.enabled and tracker.worker_spec() is None
    tracker.log_params({"a": 1})
    tracker.log_metrics({"loss": 1.0}, 1)
    tracker.end()
    messages = [r.getMessage() for r in caplog.records if r.name == "s2o_platform.tracking"]
    assert len(messages) == 1 and "unreachable" in messages[0] and "s3cret" not in messages[0], messages


def test_eval_run_id_without_a_tracking_uri_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--data",
            str(tmp_path / "nowhere"),
            "--model",
            f"t={tmp_path / 'b'}",
            "--out",
            str(tmp_path / "r"),
            "--mlflow-run-id",
            "abc",
        ],
    )
    assert result.exit_code == 2 and "MLFLOW_TRACKING_URI" in result.stderr
    assert not (tmp_path / "r").exists()


# -- a real server, real training ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server_process(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 (SQLite backend, artefacts proxied into a folder), starting: (process, url, log).
    Stopped (its whole process group) when the module's tests are done."""
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
    ]
    log = root / "server.log"
    # No job runner (MLflow 3's huey consumers, for GenAI jobs): tracking and the registry do not use it.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, cwd=root, env=env
        )
    try:
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (its uvicorn child included)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is still shutting down
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.fixture(scope="module")
def mlflow_server(mlflow_server_process):
    """The server's URL once its /health endpoint answers 200."""
    proc, url, log = mlflow_server_process
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail("mlflow server exited:\n" + log.read_text()[-3000:])
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return url
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("mlflow server not healthy within 180 s:\n" + log.read_text()[-3000:])
        time.sleep(0.25)


@pytest.mark.ray
def test_unreachable_server_is_one_warning_and_training_succeeds(
    mlflow_server_process, ray_cluster, synth_store_32, tmp_path, monkeypatch, caplog
):
    # (mlflow_server_process: the loopback server of the next tests boots meanwhile; this test does not use it)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed)
    caplog.set_level(logging.WARNING, logger="s2o_platform.tracking")
    result = run_training(
        "teacher",
        cfg("train.max_steps=2", "checkpoint.every_steps=2", "tracking.register_as=x"),
        synth_store_32,
        str(tmp_path / "run"),
        32,
        log=lambda m: None,
    )
    assert result.step == 2 and (tmp_path / "run" / "bundle" / "s2o_bundle.json").exists()
    warnings = [
        r for r in caplog.records if r.name == "s2o_platform.tracking" and r.levelno == logging.WARNING
    ]
    assert (
        len(warnings) == 1
        and closed in warnings[0].getMessage()
        and "tracking is off" in warnings[0].getMessage()
    )
    assert not (tmp_path / "run" / RUN_FILE).exists()


@pytest.fixture(scope="module")
def client(mlflow_server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server)


@pytest.fixture(scope="module")
def tracked_run(ray_cluster, synth_store_32, mlflow_server, tmp_path_factory):
    """Two workers, 6 steps, metrics every 2 steps, tracking and registration set in the config."""
    out = tmp_path_factory.mktemp("tracked") / "teacher-run"
    sets = [
        "train.max_steps=6",
        "checkpoint.every_steps=6",
        "scaling.num_workers=2",
        f"tracking.uri={mlflow_server}",
        f"tracking.experiment={EXPERIMENT}",
        f"tracking.register_as={MODEL_NAME}",
    ]
    messages: list[str] = []
    result = run_training("teacher", cfg(*sets), synth_store_32, str(out), 32, log=messages.append)
    return out, sets, result, messages


def _steps(client, run_id, key):
    return sorted(
        m.step for m in client.get_metric_history(run_id, key)
    )  # a step logged twice would show twice


@pytest.mark.ray
def test_training_logs_config_progress_bundle_and_model_version(tracked_run, client):
    out, _, result, messages = tracked_run
    assert result.step == 6
    run_id = json.loads((out / RUN_FILE).read_text())["run_id"]
    assert any(f"MLflow run {run_id}" in m for m in messages)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "teacher-run"
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    params = run.data.params
    assert params["train.max_steps"] == "6" and params["scaling.num_workers"] == "2"
    assert params["model.block_out_channels"] == "[32, 32]" and params["s2o.stage"] == "teacher"
    assert params["tracking.register_as"] == MODEL_NAME and "tracking.uri" not in params
    # progress from rank 0 only: one point per logging step (two workers would otherwise give two per step)
    for key in ("loss", "lr", "samples_per_s", "data_wait_frac"):
        assert _steps(client, run_id, key) == [2, 4, 6], key
    history = {h["step"]: h["loss"] for h in result.history}
    assert [
        m.value for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    ] == pytest.approx([history[2], history[4], history[6]])
    bundle_files = {Path(f.path).name for f in client.list_artifacts(run_id, "bundle")}
    assert "s2o_bundle.json" in bundle_files, bundle_files
    assert "config.yaml" in {f.path for f in client.list_artifacts(run_id)}
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert [(v.run_id, v.source, v.tags.get("s2o.step")) for v in versions] == [
        (run_id, f"runs:/{run_id}/bundle", "6")
    ]
    assert run.data.tags["s2o.registered_model"] == f"{MODEL_NAME}/{versions[0].version}"


@pytest.mark.ray
def test_resumed_run_continues_the_same_mlflow_run(tracked_run, client, synth_store_32):
    out, sets, _, _ = tracked_run
    run_id = json.loads((out / RUN_FILE).read_text())["run_id"]
    result = run_training(
        "teacher", cfg(*sets, "train.max_steps=8"), synth_store_32, str(out), 32, log=lambda m: None
    )
    assert result.resumed_from == 6 and result.step == 8
    assert json.loads((out / RUN_FILE).read_text())["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert _steps(client, run_id, "loss") == [2, 4, 6, 8]
    assert run.data.params["train.max_steps"] == "6"  # params are immutable: the change is a tag
    assert (
        run.data.tags["s2o.changed.train.max_steps"] == "6 -> 8"
        and run.data.tags["s2o.resumed_from_step"] == "6"
    )
    assert sorted(v.tags["s2o.step"] for v in client.search_model_versions(f"name='{MODEL_NAME}'")) == [
        "6",
        "8",
    ]
    assert len(client.search_runs([run.info.experiment_id])) == 1


@pytest.mark.ray
def test_eval_logs_its_report_into_the_training_run(
    tracked_run, client, synth_store_32, monkeypatch, tmp_path
):
    out, _, _, _ = tracked_run
    run_id = json.loads((out / RUN_FILE).read_text())["run_id"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    report = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--data",
            synth_store_32,
            "--out",
            str(report),
            "--limit",
            "4",
            "--batch-size",
            "4",
            "--repeats",
            "1",
            "--no-speed-references",
            "--model",
            f"teacher={out / 'bundle'}@ddim:2",
            "--mlflow-run-id",
            run_id,
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((report / "report.json").read_text())["rows"]
    metrics = client.get_run(run_id).data.metrics
    assert metrics["eval/teacher ddim-2/psnr"] == pytest.approx(rows[0]["psnr"])
    assert metrics["eval/teacher ddim-2/latency_ms"] > 0
    logged = {Path(f.path).name for f in client.list_artifacts(run_id, "eval/report")}
    assert {"report.json", "report.md", "tradeoff.png", "samples.png"} <= logged
