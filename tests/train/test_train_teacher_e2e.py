"""Teacher training end to end on the shared local Ray cluster: real Ray Train, real DeepSpeed."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import yaml
from typer.testing import CliRunner

from s2o_platform import storage
from s2o_platform.bundle import load_bundle
from s2o_platform.cli import app
from s2o_platform.config import TeacherConfig, load_config
from s2o_platform.data.normalization import SarNormalization
from s2o_platform.data.store import StoreMetadata, decode_batch, read_tiles, write_metadata
from s2o_platform.data.synth_writer import run_synth
from s2o_platform.inference import translate_tiles
from s2o_platform.train.checkpoint_files import TRAINER_STATE_FILE
from s2o_platform.train.launcher import RUN_NAME, TrainingSetupError, latest_checkpoint_step, run_training
from tests.fixtures import REPO_ROOT, SMALL_TEACHER_UNET, TINY_CONFIGS

pytestmark = pytest.mark.ray
REPO = REPO_ROOT
TINY_PRESET = TINY_CONFIGS / "teacher.yaml"
RUN_TIMEOUT_S = 600  # a bound on a hang, not a timing assertion
# A smaller network than the tiny preset keeps these tests quick; the preset itself is checked elsewhere.
FAST = [
    *SMALL_TEACHER_UNET,
    "train.batch_size=16",
    "train.warmup_steps=5",
    "train.lr=2e-3",
    "train.log_every_steps=5",
]


@pytest.fixture(scope="module")
def store(synth_store_32):
    return synth_store_32


def cfg(*overrides):
    return load_config(TeacherConfig, TINY_PRESET, [*FAST, *overrides])


def test_train_on_s3_loss_falls_and_bundle_loads(ray_cluster, s3_endpoint, store):
    options = storage.StorageOptions(s3_endpoint=s3_endpoint)
    s3_store = "s3://s2o-test/train-store"
    run_synth(s3_store, pairs=256, size=32, seed=1, options=options, progress=False)
    out = "s3://s2o-test/runs/teacher"
    run_cfg = cfg("train.max_steps=40", "checkpoint.every_steps=20")
    assert run_cfg.model.sample_size is None  # the preset leaves the tile side to the store
    result = run_training(
        "teacher", run_cfg, s3_store, out, run_cfg.model_tile_size(), options=options, log=lambda m: None
    )
    assert result.step == 40 and result.bundle == out + "/bundle"
    # ... and the run records the size it took from the store
    fs, root = storage.resolve(out, options)
    assert (
        yaml.safe_load(storage.read_bytes(fs, storage.join(root, "config.yaml")))["model"]["sample_size"]
        == 32
    )
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 8 and np.mean(losses[-3:]) < 0.8 * losses[0], losses
    bundle = load_bundle(result.bundle, options=options)
    assert bundle.metadata.stage == "teacher" and bundle.metadata.model_card["trained_steps"] == 40
    assert bundle.metadata.tile_size == 32
    sar = decode_batch(read_tiles(store, "test").take_batch(4, batch_format="numpy"))["sar"]
    out_tiles = translate_tiles(bundle, sar, "ddim", 5, seed=0)
    assert out_tiles.shape == (4, 3, 32, 32) and np.isfinite(out_tiles).all()
    fs, root = storage.resolve(out, options)
    assert json.loads(storage.read_bytes(fs, root + "/result.json"))["step"] == 40


def test_run_waits_out_an_s3_outage_that_stopped_ray_train_and_resumes(ray_cluster, s3_server, store):
    """OUT on S3 goes down (connections refused) after the first checkpoint and stays down until the
    launcher reports that the outage ended the Ray Train run; the launcher waits for S3 and resumes from the
    latest registered checkpoint (its history is kept as it was, not computed again) and finishes: every
    logged step once, only registered checkpoint folders left in OUT, and the bundle loads."""
    import ray.train

    options = storage.StorageOptions(s3_endpoint=s3_server.endpoint)
    out = "s3://s2o-test/runs/teacher-outage"
    steps = 12
    run_cfg = cfg(
        f"train.max_steps={steps}",
        "checkpoint.every_steps=1",
        "train.log_every_steps=1",
        "failure.max_failures=1",
        "failure.storage_wait_s=300",
    )
    messages: list[str] = []
    stopped_by_outage = threading.Event()
    outcome: dict = {}

    def log(message: str) -> None:
        messages.append(message)
        if "Ray Train stopped" in message:
            stopped_by_outage.set()

    def train():
        try:
            outcome["result"] = run_training(
                "teacher", run_cfg, store, out, run_cfg.model_tile_size(), options=options, log=log
            )
        except BaseException as err:  # noqa: BLE001 - reported by the test thread
            outcome["error"] = err
        finally:
            stopped_by_outage.set()  # nothing more to wait for

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (registered := latest_checkpoint_step(out, options))[0] is None and "error" not in outcome:
        assert time.monotonic() < deadline, "no checkpoint was registered"
        time.sleep(0.2)
    assert "error" not in outcome, outcome.get("error")
    fs, _ = storage.resolve(out, options)
    before_outage = json.loads(storage.read_bytes(fs, storage.join(registered[1], TRAINER_STATE_FILE)))
    s3_server.stop()
    try:
        assert stopped_by_outage.wait(RUN_TIMEOUT_S), "the outage never ended the Ray Train run"
    finally:
        s3_server.start()
    assert "result" not in outcome, "the run finished before the outage"
    thread.join(RUN_TIMEOUT_S)
    assert not thread.is_alive(), "the run did not finish once S3 was back"
    assert "error" not in outcome, outcome.get("error")
    assert any("storage restart 1 of failure.max_failures=1" in m for m in messages), messages
    result = outcome["result"]
    assert result.step == steps
    assert [h["step"] for h in result.history] == list(range(1, steps + 1))
    # resumed, not started again: the steps up to the checkpoint read before the outage are that
    # checkpoint's records, throughput figures included (a step computed again measures its own)
    kept = before_outage["history"]
    assert kept and result.history[: len(kept)] == kept
    # what Ray Train registered is all that is left (an upload the outage cut short is removed)
    _, root = storage.resolve(out, options)
    run_dir = storage.join(root, RUN_NAME)
    folders = {
        info.base_name
        for info in fs.get_file_info(pafs.FileSelector(run_dir))
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_")
    }
    record = ray.train.Result.from_path(run_dir, storage_filesystem=fs)
    assert folders == {c.path.rsplit("/", 1)[-1] for c, _ in record.best_checkpoints}
    bundle = load_bundle(result.bundle, options=options)
    assert bundle.metadata.model_card["trained_steps"] == steps


def test_killed_run_resumes_past_its_last_checkpoint(ray_cluster, store, tmp_path):
    """Kill the whole driver mid-training (two workers, ZeRO-2), then run the same command again."""
    import ray

    free_before = ray.available_resources().get("CPU", 0)
    out = tmp_path / "run"
    sets = [
        *FAST,
        "train.max_steps=400",
        "checkpoint.every_steps=10",
        "scaling.num_workers=2",
        "deepspeed.zero_stage=2",
    ]
    command = [
        sys.executable,
        "-m",
        "s2o_platform.cli",
        "train",
        "teacher",
        "--config",
        str(TINY_PRESET),
        "--data",
        store,
        "--out",
        str(out),
        "--address",
        ray.get_runtime_context().gcs_address,
    ]
    for s in sets:
        command += ["--set", s]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            step, _ = latest_checkpoint_step(str(out))
            if step is not None and step >= 10:
                break
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(1)
        else:
            pytest.fail("no checkpoint within 300 s:\n" + (tmp_path / "first.log").read_text()[-3000:])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at, _ = latest_checkpoint_step(str(out))
    assert killed_at is not None and killed_at < 400
    # A kill can land while a checkpoint is being written: such a folder is not registered, and is passed over.
    half_written = out / "ray_train" / "checkpoint_9999-12-31_23-59-59.999999"
    half_written.mkdir()
    (half_written / "trainer_state.json").write_text("")
    assert latest_checkpoint_step(str(out))[0] == killed_at

    # The same command again, with a reachable max_steps: it resumes instead of starting over.
    # The killed driver's training workers hold CPUs until Ray reaps them: wait until they are free again.
    deadline = time.monotonic() + 120
    while ray.available_resources().get("CPU", 0) < free_before:
        assert time.monotonic() < deadline, (
            f"the killed run's workers still hold CPUs: {ray.available_resources()}"
        )
        time.sleep(0.2)
    messages = []
    final = killed_at + 10
    result = run_training(
        "teacher",
        cfg(*sets[len(FAST) :], f"train.max_steps={final}"),
        store,
        str(out),
        32,
        log=messages.append,
    )
    assert result.resumed_from == killed_at
    assert any(f"resuming from checkpoint at step {killed_at}" in m for m in messages)
    # the finished run removed the folder Ray Train never registered (nothing would, else)
    assert not half_written.exists()
    assert any("never registered" in m and half_written.name in m for m in messages), messages
    assert result.step == final
    steps = [h["step"] for h in result.history]
    assert steps == sorted(set(steps)), steps  # strictly increasing: no restart from step 0
    assert min(s for s in steps if s > killed_at) > killed_at and steps[-1] == final

    # A registered checkpoint damaged afterwards is named before any worker starts.
    _, latest = latest_checkpoint_step(str(out))
    Path(latest, "trainer_state.json").write_text("{truncated")
    with pytest.raises(TrainingSetupError, match="corrupt checkpoint .*train into a new --out"):
        run_training(
            "teacher",
            cfg(*sets[len(FAST) :], f"train.max_steps={final + 10}"),
            store,
            str(out),
            32,
            log=messages.append,
        )


def test_setup_errors_before_any_worker(ray_cluster, store, tmp_path):
    def run(c, data=store, out=tmp_path / "o"):
        return run_training("teacher", c, data, str(out), c.model_tile_size(), log=lambda m: None)

    with pytest.raises(TrainingSetupError, match="needs 1 GPU.*has 0"):
        run(cfg("scaling.use_gpu=true"))
    with pytest.raises(TrainingSetupError, match="no tile store"):
        run(cfg(), data=str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    write_metadata(
        str(empty), StoreMetadata(tile_size=32, sar_channels=1, sar_normalization=SarNormalization())
    )
    with pytest.raises(TrainingSetupError, match="no training tiles"):
        run(cfg(), data=str(empty))
    with pytest.raises(TrainingSetupError, match="32 px tiles but the model is built for 64 px"):
        run(cfg("model.sample_size=64"))
    with pytest.raises(TrainingSetupError, match="need 20 CPUs"):
        run(cfg("scaling.num_workers=20"))
    # one worker per node on a one-node cluster would wait for a second node for ever
    with pytest.raises(
        TrainingSetupError, match="STRICT_SPREAD puts each of the 2 workers on its own node, but 1"
    ):
        run(cfg("scaling.num_workers=2", "scaling.placement_strategy=STRICT_SPREAD"))
    # A run folder from another architecture.
    other = tmp_path / "other"
    other.mkdir()
    (other / "stage.txt").write_text("teacher")
    (other / "config.yaml").write_text("model:\n  block_out_channels: [64, 64]\n")
    with pytest.raises(
        TrainingSetupError,
        match=r"different defining settings.*model.block_out_channels: \[64, 64\] -> \[32, 32\]",
    ):
        run(cfg(), out=other)
    # A run folder whose Ray Train run record is damaged.
    record = tmp_path / "damaged" / "ray_train" / "checkpoint_manager_snapshot.json"
    record.parent.mkdir(parents=True)
    record.write_text("{not json")
    with pytest.raises(TrainingSetupError, match="run record .* is unreadable"):
        run(cfg(), out=tmp_path / "damaged")
    assert not (tmp_path / "o").exists()  # nothing was started


def test_cli_reports_setup_errors_cleanly(ray_cluster, store, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "train",
            "teacher",
            "--config",
            str(TINY_PRESET),
            "--data",
            store,
            "--out",
            str(tmp_path / "r"),
            "--set",
            "scaling.use_gpu=true",
        ],
    )
    assert result.exit_code == 2 and "needs 1 GPU" in result.stderr and "Traceback" not in result.output
    result = CliRunner().invoke(
        app,
        [
            "train",
            "teacher",
            "--config",
            str(TINY_PRESET),
            "--data",
            store,
            "--out",
            str(tmp_path / "r"),
            "--set",
            "train.max_step=3",
        ],
    )
    assert result.exit_code == 2 and "unknown key 'train.max_step'" in result.stderr


def test_ray_job_submit_trains_with_the_jobs_entrypoint(ray_cluster, store, tmp_path):
    """`ray job submit --working-dir . -- python jobs/train_teacher.py ...` against the running cluster, with the
    token-auth environment a client needs (RAY_AUTH_MODE=token), as the README documents."""
    import ray

    out = tmp_path / "job-run"
    ray_cli = Path(sys.executable).parent / "ray"
    command = [
        str(ray_cli),
        "job",
        "submit",
        "--address",
        ray.get_runtime_context().gcs_address,
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps({"excludes": [".venv", ".git", "runs"]}),
        "--",
        sys.executable,
        "jobs/train_teacher.py",
        "--config",
        "configs/tiny/teacher.yaml",
        "--data",
        store,
        "--out",
        str(out),
    ]
    for s in [*FAST, "train.max_steps=6", "checkpoint.every_steps=6"]:
        command += ["--set", s]
    for _attempt in range(6):
        result = subprocess.run(
            command,
            env={**os.environ, "RAY_AUTH_MODE": "token"},
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
        )
        output = result.stdout + result.stderr
        # The job agent starts lazily with the dashboard; on a busy machine Ray says to try again later.
        if "No available agent to submit job" not in output:
            break
        time.sleep(10)
    assert result.returncode == 0, output[-4000:]
    assert "succeeded" in output and "done at step 6" in output
    assert load_bundle(str(out / "bundle")).metadata.model_card["trained_steps"] == 6


def test_resumed_run_draws_what_an_uninterrupted_one_would(ray_cluster, store, tmp_path):
    """The noise/timestep generator travels with checkpoints: 2 steps + resume to 4 ends in the generator
    state of 4 uninterrupted steps (each step draws the same amount), not in the seed's state + 2 steps."""
    fast = ["train.max_steps=4", "checkpoint.every_steps=2", "train.batch_size=4", "train.augment=false"]
    straight = run_training("teacher", cfg(*fast), store, str(tmp_path / "straight"), 32, log=lambda m: None)
    run_training(
        "teacher",
        cfg(*fast[1:], "train.max_steps=2"),
        store,
        str(tmp_path / "resumed"),
        32,
        log=lambda m: None,
    )
    resumed = run_training("teacher", cfg(*fast), store, str(tmp_path / "resumed"), 32, log=lambda m: None)
    assert straight.step == resumed.step == 4 and resumed.resumed_from == 2

    def final_generator(out):
        checkpoint = max(
            (p for p in (out / "ray_train").glob("checkpoint_*") if p.is_dir()), key=lambda p: p.name
        )
        return json.loads((checkpoint / "generator_rank0.json").read_text())["torch_generator"]

    assert final_generator(tmp_path / "resumed") == final_generator(tmp_path / "straight")
    halfway = min(
        (p for p in (tmp_path / "straight" / "ray_train").glob("checkpoint_*") if p.is_dir()),
        key=lambda p: p.name,
    )
    assert json.loads((halfway / "generator_rank0.json").read_text())["torch_generator"] != final_generator(
        tmp_path / "straight"
    )
