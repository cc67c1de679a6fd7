"""What the launcher treats as a storage outage, how it waits one out (moto's S3 server on loopback), and
what it tidies after a run."""

from __future__ import annotations

import errno
import signal
from types import SimpleNamespace

import pytest
from ray.train import Checkpoint, ControllerError, WorkerGroupError

from s2o_platform import storage
from s2o_platform.train.launcher import (
    fit_keeping_sigint,
    prune_unregistered_checkpoints,
    storage_failure,
    wait_for_storage,
)


@pytest.fixture
def s3_out(s3_server):
    options = storage.StorageOptions(s3_endpoint=s3_server.endpoint)
    fs, root = storage.resolve("s3://s2o-test/outage-probe", options)
    return fs, root


def test_a_controller_that_could_not_write_is_a_storage_failure(s3_out):
    fs, root = s3_out
    cause = OSError("AWS Error NETWORK_CONNECTION during CreateMultipartUpload")
    assert storage_failure(ControllerError(cause), fs, root) is cause


def test_a_worker_that_failed_on_storage_is_a_storage_failure(s3_out):
    fs, root = s3_out
    cause = OSError("AWS Error NETWORK_CONNECTION during PutObject")
    assert storage_failure(WorkerGroupError("upload", {1: cause}), fs, root) is cause
    wrapped = RuntimeError("checkpoint upload failed")
    wrapped.__cause__ = cause
    assert (
        storage_failure(WorkerGroupError("upload", {0: RuntimeError("nan"), 1: wrapped}), fs, root) is cause
    )


def test_errors_an_outage_cannot_explain_are_not_storage_failures(s3_out):
    """Waiting would not mend a full disk, a read-only folder or a denied access: the run fails at once."""
    fs, root = s3_out
    for permanent in (
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EACCES, "Permission denied"),
        OSError(errno.EROFS, "Read-only file system"),
        OSError("AWS Error ACCESS_DENIED during PutObject operation"),
    ):
        assert storage_failure(ControllerError(permanent), fs, root) is None, permanent
        assert storage_failure(WorkerGroupError("w", {0: permanent}), fs, root) is None, permanent


def test_other_failures_while_storage_answers_are_not(s3_out):
    fs, root = s3_out
    assert storage_failure(ControllerError(ValueError("bad config")), fs, root) is None
    assert storage_failure(WorkerGroupError("rank 0 died", {0: RuntimeError("nan")}), fs, root) is None
    assert storage_failure(KeyboardInterrupt(), fs, root) is None
    assert storage_failure(OSError("not from Ray Train"), fs, root) is None


def test_a_worker_failure_while_storage_is_down_is_a_storage_failure(s3_server, s3_out):
    fs, root = s3_out
    s3_server.stop()
    try:
        failure = storage_failure(WorkerGroupError("uploads failed", {0: RuntimeError("upload")}), fs, root)
        # an interrupt is the user's, whatever the storage does
        assert storage_failure(KeyboardInterrupt(), fs, root) is None
    finally:
        s3_server.start()
    assert isinstance(failure, OSError)


def test_wait_for_storage_returns_once_the_endpoint_is_back(s3_server, s3_out):
    fs, root = s3_out
    failed_probes: list[OSError] = []

    def end_the_outage(err: OSError) -> None:
        failed_probes.append(err)
        if len(failed_probes) == 2:
            s3_server.start()

    s3_server.stop()
    try:
        back = wait_for_storage(fs, root, timeout_s=120, first_delay_s=0.05, on_unreachable=end_the_outage)
    finally:
        if len(failed_probes) < 2:
            s3_server.start()
    assert back
    assert len(failed_probes) == 2 and all(isinstance(e, OSError) for e in failed_probes)


def test_wait_for_storage_gives_up_after_its_bound(s3_server, s3_out):
    fs, root = s3_out
    failed_probes: list[OSError] = []
    s3_server.stop()
    try:
        assert not wait_for_storage(
            fs, root, timeout_s=0.5, first_delay_s=0.1, on_unreachable=failed_probes.append
        )
    finally:
        s3_server.start()
    assert failed_probes  # it did probe, and every probe failed


def test_a_local_out_answers_even_before_it_exists(tmp_path):
    fs, root = storage.resolve(str(tmp_path / "not-yet"))
    assert wait_for_storage(fs, root, timeout_s=1, on_unreachable=pytest.fail)


def test_prune_removes_only_checkpoint_folders_ray_train_did_not_register(tmp_path):
    run_dir = tmp_path / "ray_train"
    for name in ("checkpoint_1", "checkpoint_2", "checkpoint_3_cut_short", "not_a_checkpoint"):
        (run_dir / name).mkdir(parents=True)
        (run_dir / name / "trainer_state.json").write_text("{}")
    (run_dir / "checkpoint_manager_snapshot.json").write_text("{}")
    fs, root = storage.resolve(str(run_dir))
    result = SimpleNamespace(
        checkpoint=Checkpoint(str(run_dir / "checkpoint_2")),
        best_checkpoints=[
            (Checkpoint(str(run_dir / "checkpoint_1")), {}),
            (Checkpoint(str(run_dir / "checkpoint_2")), {}),
        ],
    )
    assert prune_unregistered_checkpoints(fs, root, result) == ["checkpoint_3_cut_short"]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoint_1",
        "checkpoint_2",
        "checkpoint_manager_snapshot.json",
        "not_a_checkpoint",
    ]
    # without a record of what was registered nothing is removed
    assert (
        prune_unregistered_checkpoints(fs, root, SimpleNamespace(checkpoint=None, best_checkpoints=None))
        == []
    )
    assert (run_dir / "checkpoint_1").is_dir()


def test_ctrl_c_works_again_after_a_run(monkeypatch):
    """Ray Train leaves its own SIGINT handler installed after fit(); the launcher puts the process's back."""
    mine = signal.getsignal(signal.SIGINT)

    class TrainerInstallingItsHandler:  # what Ray Train's fit() does to the handler, and nothing else
        def fit(self):
            signal.signal(signal.SIGINT, lambda signum, frame: None)
            return "result"

    assert fit_keeping_sigint(TrainerInstallingItsHandler()) == "result"
    assert signal.getsignal(signal.SIGINT) is mine
