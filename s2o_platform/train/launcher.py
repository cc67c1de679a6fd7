"""The driver side of training: validate everything, then one Ray Train `TorchTrainer` run.

Layout of a run at OUT (local folder or s3:// prefix):

    OUT/config.yaml          the resolved config of the latest launch
    OUT/ray_train/           Ray Train's storage: checkpoint_*/ (DeepSpeed state, EMA, bundle)
    OUT/bundle/              the final inference bundle, copied from the latest checkpoint
    OUT/result.json          final step and metrics
    OUT/mlflow_run.json      with tracking on: the MLflow run this folder logs to (a resumed launch continues it)

Running the same command again with the same OUT resumes from the latest checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
import yaml

from s2o_platform import storage
from s2o_platform.config import TrainingStageConfig, dump_config
from s2o_platform.data.ray_context import scoped_data_context
from s2o_platform.data.store import StoreError, StoreMetadata, read_metadata, read_tiles, split_counts
from s2o_platform.errors import S2OError
from s2o_platform.train.checkpoint_files import BUNDLE_DIR, TRAINER_STATE_FILE
from s2o_platform.train.collate import TRAIN_COLUMNS
from s2o_platform.train.data_order import SPLIT, shuffle_seed
from s2o_platform.train.deepspeed_config import effective_batch
from s2o_platform.train.harness import train_loop_per_worker

RUN_NAME = "ray_train"
STAGE_FILE = "stage.txt"
TEACHER_FILE = "teacher.json"  # distillation: which teacher bundle (by content) the run distils
#: Config sections that define a run: resuming with any of them changed would continue a different
#: experiment under the old one's name (or fail inside the workers), so it is refused.
DEFINING_SECTIONS = {
    "teacher": ("model", "diffusion", "loss", "deepspeed"),
    "distill": ("distill", "deepspeed"),
    "gan": ("generator", "discriminator", "gan", "deepspeed"),
}


class TrainingSetupError(S2OError, ValueError):
    """A problem found before any worker starts (config, data, checkpoint, resources)."""


class TrainingStorageError(S2OError, OSError):
    """The run's storage (OUT) stopped answering and did not come back in time; its checkpoints are kept."""


@dataclass
class TrainingResult:
    out: str
    bundle: str
    step: int
    metrics: dict[str, Any]
    resumed_from: int | None
    seconds: float
    history: list[dict[str, Any]]


def latest_checkpoint_step(
    out: str, options: storage.StorageOptions | None = None
) -> tuple[int | None, str | None]:
    """(step, path) of the checkpoint a new launch into OUT resumes from, or (None, None).

    That is the newest checkpoint Ray Train *registered* (after every worker finished writing its
    part), read through Ray's own run record. A checkpoint folder still being written when the run was
    killed is not registered: Ray does not resume from it, and neither does this report it.
    """
    import logging

    import ray.train

    fs, root = storage.resolve(out, options)
    run_dir = storage.join(root, RUN_NAME)
    if not storage.exists(fs, run_dir):
        return None, None
    ray_log = logging.getLogger("ray.train")
    level = ray_log.level
    ray_log.setLevel(logging.WARNING)  # from_path announces the record it found at INFO; we say it our way
    try:
        result = ray.train.Result.from_path(run_dir, storage_filesystem=fs)
    except RuntimeError:
        return None, None  # no run record: the run stopped before its first checkpoint was registered
    except Exception as err:  # noqa: BLE001 - a damaged record is reported by name, not as Ray's stack trace
        raise TrainingSetupError(
            f"the Ray Train run record in {run_dir} is unreadable ({type(err).__name__}: {err}); train into a new --out"
        ) from None
    finally:
        ray_log.setLevel(level)
    if result.checkpoint is None:
        return None, None
    path = result.checkpoint.path
    try:
        step = int(json.loads(storage.read_bytes(fs, storage.join(path, TRAINER_STATE_FILE)))["step"])
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise TrainingSetupError(
            f"corrupt checkpoint {path}: {err}. This run cannot resume from it: train into a new --out "
            "(the inference bundle of every kept checkpoint is in its bundle/ folder)"
        ) from None
    return step, path


def check_resources(cfg: TrainingStageConfig) -> None:
    import ray

    resources = ray.cluster_resources()
    if cfg.scaling.use_gpu:
        gpus = resources.get("GPU", 0)
        if gpus < cfg.scaling.num_workers:
            raise TrainingSetupError(
                f"scaling.use_gpu=true with scaling.num_workers={cfg.scaling.num_workers} needs "
                f"{cfg.scaling.num_workers} GPU(s), but the Ray cluster has {gpus:g}. "
                "Set --set scaling.use_gpu=false to train on CPU, or connect to a GPU cluster with --address"
            )
    cpus_needed = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    if resources.get("CPU", 0) < cpus_needed:
        raise TrainingSetupError(
            f"{cfg.scaling.num_workers} worker(s) x {cfg.scaling.cpus_per_worker} CPU need {cpus_needed:g} CPUs, "
            f"the Ray cluster has {resources.get('CPU', 0):g}: lower scaling.num_workers or scaling.cpus_per_worker"
        )
    if cfg.scaling.placement_strategy == "STRICT_SPREAD":
        # one worker per node, always: Ray would wait for more nodes for ever (an autoscaler may add them, but
        # this check runs on the cluster as it is: say so rather than hang)
        worker_shape = {"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if cfg.scaling.use_gpu else {})}
        fitting = [
            node
            for node in ray.nodes()
            if node["Alive"] and all(node["Resources"].get(k, 0) >= v for k, v in worker_shape.items())
        ]
        if len(fitting) < cfg.scaling.num_workers:
            raise TrainingSetupError(
                f"scaling.placement_strategy=STRICT_SPREAD puts each of the {cfg.scaling.num_workers} workers on its "
                f"own node, but {len(fitting)} node(s) of the Ray cluster can hold a worker ({worker_shape}): use "
                "SPREAD (one per node where possible) or PACK, or add nodes"
            )


def check_store(
    data: str, tile_size: int | None, options: storage.StorageOptions | None
) -> tuple[StoreMetadata, int]:
    """The store's metadata and its number of training rows, after checking it can feed this model (tile_size
    None: a model sized from the store, which always fits)."""
    try:
        metadata = read_metadata(data, options)
    except StoreError as err:
        raise TrainingSetupError(str(err)) from None
    counts = split_counts(data, options)
    if counts["train"] == 0:
        raise TrainingSetupError(f"the store {data} has no training tiles (rows per split: {counts})")
    if tile_size is not None and metadata.tile_size != tile_size:
        raise TrainingSetupError(
            f"the store {data} has {metadata.tile_size} px tiles but the model is built for {tile_size} px "
            f"(model.sample_size): use --set model.sample_size={metadata.tile_size} or a store ingested with "
            f"--tile-size {tile_size}"
        )
    return metadata, counts["train"]


def check_teacher_bundle(
    teacher: str, store: StoreMetadata, data: str, options: storage.StorageOptions | None
) -> None:
    """A distillation teacher must be a teacher bundle made for this store's tiles and normalisation."""
    from s2o_platform.bundle import BundleError, check_bundle, check_fits

    try:
        meta = check_bundle(teacher, options)
    except BundleError as err:
        raise TrainingSetupError(str(err)) from None
    if meta.stage != "teacher":
        raise TrainingSetupError(
            f"{teacher} is a {meta.stage} bundle, not a teacher: pass the bundle of `s2o train teacher` (RUN/bundle)"
        )
    try:  # optical normalisation included: a student distilled on other optical tiles than its teacher's is wrong
        check_fits(
            meta,
            store,
            teacher,
            data,
            role="teacher",
            advice="distil on the store the teacher was trained for",
        )
    except BundleError as err:
        raise TrainingSetupError(str(err)) from None


def _flat(data: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}.{key}"))
    return out


def differing_keys(previous: dict[str, Any], current: dict[str, Any], sections: tuple[str, ...]) -> list[str]:
    """'key: old -> new' for every dotted key of `sections` whose value differs (missing counts as None)."""
    old = {k: v for s in sections for k, v in _flat(previous.get(s), s).items()}
    new = {k: v for s in sections for k, v in _flat(current.get(s), s).items()}
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]


def check_previous_run(
    out: str,
    cfg: TrainingStageConfig,
    stage: str,
    options: storage.StorageOptions | None,
    teacher_identity: dict[str, str] | None = None,
) -> None:
    """An existing run in OUT must be the same run: same stage, same defining sections and, for
    distillation, the same teacher bundle content. Anything else is refused naming what differs."""
    fs, root = storage.resolve(out, options)
    try:
        previous = yaml.safe_load(storage.read_bytes(fs, storage.join(root, "config.yaml")))
        previous_stage = storage.read_bytes(fs, storage.join(root, STAGE_FILE)).decode().strip()
    except (FileNotFoundError, OSError):
        return
    if previous_stage != stage:
        raise TrainingSetupError(
            f"{out} holds a {previous_stage} run; train the {stage} stage into another --out"
        )
    differences = differing_keys(previous or {}, cfg.model_dump(mode="json"), DEFINING_SECTIONS[stage])
    if teacher_identity is not None:
        try:
            recorded = json.loads(storage.read_bytes(fs, storage.join(root, TEACHER_FILE)))
        except (FileNotFoundError, OSError, json.JSONDecodeError):
            recorded = {}
        if recorded.get("sha256") != teacher_identity["sha256"]:
            differences.append(
                f"teacher bundle: {recorded.get('bundle', 'unrecorded')} (sha256 {str(recorded.get('sha256'))[:12]}) -> "
                f"{teacher_identity['bundle']} (sha256 {teacher_identity['sha256'][:12]})"
            )
    if differences:
        raise TrainingSetupError(
            f"{out} holds a {stage} run with different defining settings, so it cannot be resumed with these: "
            + "; ".join(differences)
            + ". Use a new --out for a new run, or the run's own settings (its config.yaml) to resume it"
        )


def materialized(store: StoreMetadata, train_rows: int, cfg: TrainingStageConfig) -> bool:
    size_mb = train_rows * store.tile_size**2 * (2 * store.sar_channels + store.optical_channels) / 1e6
    return size_mb <= cfg.data.materialize_below_mb


def training_dataset(
    data: str,
    store: StoreMetadata,
    train_rows: int,
    cfg: TrainingStageConfig,
    options: storage.StorageOptions | None,
):
    """The train split as a Ray Dataset: materialised and fully shuffled per epoch when small, streamed when large.

    Its order follows train.seed: each execution (epoch) of the returned dataset has its own order, and
    the same seed gives the same sequence of orders (train/data_order.py).
    """
    from ray.data import RandomSeedConfig  # DeveloperAPI of Ray Data (pinned Ray)

    # Kept by the dataset; the driver's context is untouched. preserve_order: blocks (and rows) in read order, not
    # completion order: the seeded shuffles below number their inputs, so the same seed gives the same order
    # only over the same input order (without it, a repeated build came out in a different order every time).
    with scoped_data_context(enable_progress_bars=False, preserve_order=True):
        dataset = read_tiles(data, "train", options, columns=TRAIN_COLUMNS)
    # A plain int seed would repeat one order every epoch; reseeding folds in Ray Data's execution index.
    seed = RandomSeedConfig(seed=shuffle_seed(cfg.train.seed, SPLIT), reseed_after_execution=True)
    if materialized(store, train_rows, cfg):
        # Re-reading many small shards every epoch costs more than the training step on small sets.
        return dataset.materialize().random_shuffle(seed=seed)
    return dataset.randomize_block_order(seed=seed)


def ingest_config():
    """Ray Train's data ingest options, keeping the order of blocks (the driver's other settings carried
    over): Train replaces a dataset's execution options with these, and the seeded order needs it."""
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return ray.train.DataConfig(execution_options=options)


def run_training(
    stage: str,
    cfg: TrainingStageConfig,
    data: str,
    out: str,
    tile_size: int | None,
    extra: dict[str, Any] | None = None,
    options: storage.StorageOptions | None = None,
    log=print,
) -> TrainingResult:
    """Validate, then train one stage on the connected Ray cluster; returns where the bundle is."""
    import ray.train
    from ray.train.torch import TorchTrainer

    options = options or storage.StorageOptions.from_env()
    started = time.perf_counter()
    check_resources(cfg)
    store, train_rows = check_store(data, tile_size, options)
    cfg = cfg.sized_for_store(store.tile_size)
    teacher_identity = None
    if stage == "distill":
        from s2o_platform.bundle import bundle_digest

        teacher = (extra or {}).get("teacher", "")
        check_teacher_bundle(teacher, store, data, options)
        teacher_identity = {"bundle": teacher, "sha256": bundle_digest(teacher, options)}
    check_previous_run(out, cfg, stage, options, teacher_identity)
    log(
        f"[{stage}] effective batch {effective_batch(cfg)} (batch_size {cfg.train.batch_size} x grad_accum "
        f"{cfg.train.grad_accum} x {cfg.scaling.num_workers} worker(s)), lr {cfg.train.lr:g}"
    )
    resumed_from, _ = latest_checkpoint_step(out, options)
    if resumed_from is not None:
        if resumed_from >= cfg.train.max_steps:
            log(
                f"[{stage}] the run in {out} already reached step {resumed_from} >= train.max_steps={cfg.train.max_steps}; "
                "raise train.max_steps to train further"
            )
        log(f"[{stage}] resuming from checkpoint at step {resumed_from}")

    fs, root = storage.resolve(out, options)
    storage.write_bytes_atomic(fs, storage.join(root, "config.yaml"), dump_config(cfg).encode())
    storage.write_bytes_atomic(fs, storage.join(root, STAGE_FILE), stage.encode())
    if teacher_identity is not None:
        storage.write_bytes_atomic(
            fs, storage.join(root, TEACHER_FILE), json.dumps(teacher_identity, indent=2).encode()
        )

    dataset = training_dataset(data, store, train_rows, cfg, options)
    from s2o_platform.tracking import finish_training_run, redact, start_training_run

    # MLflow (off unless tracking.uri or $MLFLOW_TRACKING_URI): a resumed launch continues the run recorded in OUT
    run_params = {"s2o.stage": stage, "s2o.data": data}
    if teacher_identity is not None:
        run_params.update(
            {"s2o.teacher": teacher_identity["bundle"], "s2o.teacher_sha256": teacher_identity["sha256"]}
        )
    tracker = start_training_run(
        cfg.tracking, stage, out, fs, root, resumed_from, cfg.model_dump(mode="json"), run_params
    )
    if tracker.enabled:
        log(f"[{stage}] MLflow run {tracker.run_id} on {redact(tracker.uri)}")

    storage_path = root if storage.is_uri(out) else os.path.abspath(root)

    def make_trainer() -> TorchTrainer:
        return TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "stage": stage,
                "config": cfg.model_dump(mode="json"),
                "store_metadata": store.to_dict(),
                "data_uri": data,
                "extra": extra or {},
                # the object store's endpoint for what workers read themselves (the distillation teacher): a worker
                # on another node has neither the driver's environment nor its --s3-endpoint
                "storage_options": options,
                # a fully shuffled split needs no local shuffle buffer on top (it only costs copies per batch)
                "local_shuffle": not materialized(store, train_rows, cfg),
                "tracking": tracker.worker_spec(),  # rank 0 logs its progress metrics there
            },
            scaling_config=ray.train.ScalingConfig(
                num_workers=cfg.scaling.num_workers,
                use_gpu=cfg.scaling.use_gpu,
                resources_per_worker={
                    "CPU": cfg.scaling.cpus_per_worker,
                    **({"GPU": 1} if cfg.scaling.use_gpu else {}),
                },
                placement_strategy=cfg.scaling.placement_strategy,
            ),
            run_config=ray.train.RunConfig(
                name=RUN_NAME,
                storage_path=storage_path,
                storage_filesystem=fs if storage.is_uri(out) else None,
                failure_config=ray.train.FailureConfig(max_failures=cfg.failure.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
            ),
            datasets={"train": dataset},
            dataset_config=ingest_config(),
        )

    storage_restarts = 0
    while True:
        try:
            result = fit_keeping_sigint(make_trainer())
            break
        except BaseException as err:
            failure = storage_failure(err, fs, root)
            interrupted = isinstance(err, (KeyboardInterrupt, SystemExit))
            if failure is None:
                tracker.end("KILLED" if interrupted else "FAILED")
                raise
            if storage_restarts >= cfg.failure.max_failures:
                tracker.end("FAILED")
                raise TrainingStorageError(
                    f"{out} failed again after {storage_restarts} storage restart(s) "
                    f"(failure.max_failures={cfg.failure.max_failures}): {failure}. Run the same command again "
                    "once it answers: it resumes from the latest checkpoint"
                ) from err
            # an outage of OUT ends a Ray Train run for good (the controller's failed write of its checkpoint
            # index is fatal; workers that kept failing to upload use up max_failures); the checkpoints already
            # registered are intact, so resume from them once OUT answers again
            storage_restarts += 1
            log(
                f"[{stage}] Ray Train stopped on a storage error of {out} ({failure}); waiting at most "
                f"{cfg.failure.storage_wait_s:g} s for it to answer, then resuming from the latest checkpoint "
                f"(storage restart {storage_restarts} of failure.max_failures={cfg.failure.max_failures})"
            )
            try:
                back = wait_for_storage(fs, root, cfg.failure.storage_wait_s)
            except BaseException:
                tracker.end("KILLED")  # interrupted while waiting
                raise
            if not back:
                tracker.end("FAILED")
                raise TrainingStorageError(
                    f"{out} stayed unreachable for failure.storage_wait_s={cfg.failure.storage_wait_s:g} s "
                    f"after it stopped the run ({failure}); run the same command again once it is back, "
                    "it resumes from the latest checkpoint"
                ) from err
    if result.checkpoint is None:
        tracker.end("FAILED")
        raise RuntimeError(f"training finished without a checkpoint in {out}")
    try:
        removed = prune_unregistered_checkpoints(fs, storage.join(storage_path, RUN_NAME), result)
    except OSError as err:
        log(f"[{stage}] warning: could not remove unregistered checkpoint folders in {out}: {err}")
    else:
        if removed:
            log(
                f"[{stage}] removed {len(removed)} checkpoint folder(s) Ray Train never registered "
                f"(cut short by a kill or a storage error): {', '.join(removed)}"
            )
    bundle_uri = out.rstrip("/") + "/" + BUNDLE_DIR
    _copy_tree(
        result.checkpoint.filesystem,
        storage.join(result.checkpoint.path, BUNDLE_DIR),
        fs,
        storage.join(root, BUNDLE_DIR),
    )
    metrics = dict(result.metrics or {})
    step = int(metrics.get("step", cfg.train.max_steps))
    ckpt_fs, ckpt_path = result.checkpoint.filesystem, result.checkpoint.path
    history = json.loads(storage.read_bytes(ckpt_fs, storage.join(ckpt_path, TRAINER_STATE_FILE))).get(
        "history", []
    )
    summary = {
        "stage": stage,
        "step": step,
        "metrics": metrics,
        "bundle": bundle_uri,
        "resumed_from": resumed_from,
        "history": history,
    }
    storage.write_bytes_atomic(
        fs, storage.join(root, "result.json"), json.dumps(summary, indent=2, default=str).encode()
    )
    finish_training_run(tracker, cfg.tracking, fs, storage.join(root, BUNDLE_DIR), step)
    return TrainingResult(
        out, bundle_uri, step, metrics, resumed_from, time.perf_counter() - started, history
    )


#: errors an outage does not explain: waiting for the storage to come back would not help
PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
PERMANENT_MARKERS = (
    "ACCESS_DENIED",
    "AccessDenied",
    "No space left",
    "Read-only file system",
    "Permission denied",
)


def transient_storage_error(err: BaseException | None) -> OSError | None:
    """The first OSError in `err` or its causes, unless it is one an outage cannot explain (disk full,
    read-only, access denied): then None, as for no OSError at all."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError):
            if err.errno in PERMANENT_ERRNOS or any(m in str(err) for m in PERMANENT_MARKERS):
                return None
            return err
        err = err.__cause__ or err.__context__
    return None


def storage_failure(err: BaseException, fs: pafs.FileSystem, root: str) -> OSError | None:
    """The storage error behind a failed Ray Train run, if an outage of OUT is what ended it.

    Ray Train's controller could not write its checkpoint index (fatal to the run, with no retry budget), a
    worker failed on a storage error (its uploads kept failing until `max_failures` ran out), or the run failed
    while OUT does not answer. Errors an outage cannot explain (disk full, access denied) and interrupts are
    not storage failures."""
    from ray.train import ControllerError, TrainingFailedError, WorkerGroupError

    if not isinstance(err, TrainingFailedError):
        return None
    if isinstance(err, ControllerError):
        found = transient_storage_error(err.controller_failure)
        if found is not None:
            return found
    if isinstance(err, WorkerGroupError):
        for worker_error in err.worker_failures.values():
            found = transient_storage_error(worker_error)
            if found is not None:
                return found
    return unreachable(fs, root)


def unreachable(fs: pafs.FileSystem, root: str) -> OSError | None:
    """The error of one probe of `root` on `fs` (a metadata read), or None if it answered."""
    try:
        fs.get_file_info(root)
    except OSError as err:
        return err
    return None


def wait_for_storage(
    fs: pafs.FileSystem,
    root: str,
    timeout_s: float,
    first_delay_s: float = 0.5,
    max_delay_s: float = 15.0,
    on_unreachable=None,
) -> bool:
    """Probe `root` on `fs`, backing off, until it answers (True) or `timeout_s` has passed (False, after
    a last probe at the deadline).

    `on_unreachable(error)` is called after each probe that failed (tests use it to end an outage)."""
    deadline = time.monotonic() + timeout_s
    delay = first_delay_s
    while (err := unreachable(fs, root)) is not None:
        if on_unreachable is not None:
            on_unreachable(err)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, max_delay_s)
    return True


def fit_keeping_sigint(trainer):
    """`trainer.fit()`, with the process's Ctrl-C handler put back afterwards.

    Ray Train installs its own handler for the run (abort the controller; exit 0 on the third Ctrl-C) and
    leaves it installed, so a Ctrl-C after the run, e.g. while waiting out a storage outage, would do nothing."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if in_main_thread else None
    try:
        return trainer.fit()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def prune_unregistered_checkpoints(fs: pafs.FileSystem, run_dir: str, result) -> list[str]:
    """Remove the checkpoint folders of a finished run that Ray Train never registered; their names.

    A checkpoint whose upload a kill or a storage error cut short, or whose registration failed, is never
    resumed from and not counted by `checkpoint.num_to_keep`, so nothing else would remove it."""
    registered = [checkpoint for checkpoint, _ in (result.best_checkpoints or [])]
    if result.checkpoint is not None:
        registered.append(result.checkpoint)
    if not registered:
        return []  # no record of what was registered: remove nothing
    keep = {checkpoint.path.rstrip("/").rsplit("/", 1)[-1] for checkpoint in registered}
    removed = []
    for info in fs.get_file_info(pafs.FileSelector(run_dir, recursive=False)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            if info.base_name not in keep:
                fs.delete_dir(info.path)
                removed.append(info.base_name)
    return sorted(removed)


def _copy_tree(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str) -> None:
    """Replace dst with a copy of the folder src (any pyarrow filesystems)."""
    if storage.exists(dst_fs, dst):
        dst_fs.delete_dir(dst)
    dst_fs.create_dir(dst, recursive=True)
    pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)
