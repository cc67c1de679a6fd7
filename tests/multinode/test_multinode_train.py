"""Training across nodes: teacher and ACD distillation with one worker on each worker node (ZeRO-2), their
checkpoints on S3; the node holding rank 1 lost after the first checkpoint."""

from __future__ import annotations

import json
import threading
import time

import pytest

from s2o_platform import storage
from s2o_platform.bundle import load_bundle
from s2o_platform.config import DistillConfig, TeacherConfig, load_config
from s2o_platform.data.synth_writer import run_synth
from s2o_platform.train.checkpoint_files import GENERATOR_FILE
from s2o_platform.train.launcher import latest_checkpoint_step, run_training
from tests.fixtures import SMALL_TEACHER_UNET, TINY_CONFIGS
from tests.multinode.cluster import wait_for

pytestmark = pytest.mark.multinode

ACROSS_NODES = [
    "scaling.num_workers=2",
    "scaling.placement_strategy=STRICT_SPREAD",  # one worker per node, always
    "deepspeed.zero_stage=2",
    "failure.max_failures=2",
    "train.batch_size=16",
    "train.warmup_steps=5",
    "train.log_every_steps=5",
]
#: A run's steps: long enough to be mid-run when the node dies (the first checkpoint is at step 5).
MAX_STEPS = 20
#: Bound on a whole training run with its restart (a hang fails the test instead of the suite).
RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def s3_store(multinode_cluster, s3_endpoint):
    options = storage.StorageOptions(s3_endpoint=s3_endpoint)
    store = "s3://s2o-test/mn-train-store"
    run_synth(store, pairs=256, size=32, seed=1, options=options, progress=False)
    return store, options


def _rank_nodes(out: str, options) -> dict[int, str]:
    """{rank: node id} recorded in the newest registered checkpoint of the run in OUT."""
    _, path = latest_checkpoint_step(out, options)
    fs, _ = storage.resolve(out, options)
    return {
        rank: json.loads(storage.read_bytes(fs, storage.join(path, GENERATOR_FILE.format(rank=rank))))[
            "node_id"
        ]
        for rank in (0, 1)
    }


def test_teacher_on_two_nodes_survives_losing_rank_1s_node(multinode_cluster, s3_store):
    """The node holding rank 1 dies (every process SIGKILLed) once the first checkpoint is registered on S3, and
    a replacement node joins (as KubeRay replaces a pod). Ray Train restarts the worker group from that
    checkpoint (failure.max_failures); the run finishes, its loss history has every logged step once, with no
    gap, and the bundle loads."""
    cluster = multinode_cluster
    store, options = s3_store
    out = "s3://s2o-test/mn-runs/teacher"
    cfg = load_config(
        TeacherConfig,
        TINY_CONFIGS / "teacher.yaml",
        [*SMALL_TEACHER_UNET, *ACROSS_NODES, f"train.max_steps={MAX_STEPS}", "checkpoint.every_steps=5"],
    )
    outcome: dict = {}

    def train():
        try:
            outcome["result"] = run_training(
                "teacher", cfg, store, out, 32, options=options, log=lambda m: None
            )
        except BaseException as err:  # noqa: BLE001 - reported by the test thread
            outcome["error"] = err

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    first = wait_for(
        lambda: latest_checkpoint_step(out, options)[0] or outcome,
        "the first checkpoint",
        timeout=RUN_TIMEOUT_S,
    )
    assert "error" not in outcome, outcome.get("error")
    assert first < MAX_STEPS, "the run finished before a node could be lost"
    before = _rank_nodes(out, options)
    worker_ids = {node.node_id for node in cluster.workers}
    assert before[0] != before[1] and {before[0], before[1]} == worker_ids  # one rank on each worker node
    cluster.kill(cluster.node_of(before[1]))
    cluster.add_worker()
    thread.join(RUN_TIMEOUT_S)
    assert not thread.is_alive(), "training did not finish after the node was lost"
    assert "error" not in outcome, outcome.get("error")

    result = outcome["result"]
    assert result.step == MAX_STEPS
    assert [h["step"] for h in result.history] == list(range(5, MAX_STEPS + 1, 5))  # no gap, no repeat
    after = _rank_nodes(out, options)
    assert before[1] not in after.values()  # rank 1 ran on the replacement node after the restart
    bundle = load_bundle(result.bundle, options=options)
    assert (
        bundle.metadata.model_card["trained_steps"] == MAX_STEPS
        and bundle.metadata.model_card["workers"] == 2
    )


#: How long the S3 endpoint is down in the outage test (the fault's length, not a wait for a result).
S3_OUTAGE_S = 5


def test_distillation_on_two_nodes_survives_an_s3_outage_while_checkpointing(
    multinode_cluster, s3_store, s3_server
):
    """ACD distillation with one worker on each worker node (ZeRO-2), the teacher read from S3 and a checkpoint
    written there every step. Once the first is registered the S3 endpoint goes down for S3_OUTAGE_S seconds
    (connections refused), with the run still going at its end, and comes back. Whoever meets the outage
    first, a worker uploading its checkpoint (the S3 client retries) or Ray Train's controller writing its
    checkpoint index (fatal to the Ray Train run: the launcher waits for S3 and resumes from the latest
    checkpoint), the run finishes with every logged step once, each rank on its own node, and the student
    bundle loads."""
    store, options = s3_store
    teacher = "s3://s2o-test/mn-runs/teacher/bundle"
    out = "s3://s2o-test/mn-runs/student"
    steps = 8
    cfg = load_config(
        DistillConfig,
        TINY_CONFIGS / "distill.yaml",
        [*ACROSS_NODES, f"train.max_steps={steps}", "checkpoint.every_steps=1", "train.log_every_steps=1"],
    )
    outcome: dict = {}

    def train():
        try:
            outcome["result"] = run_training(
                "distill",
                cfg,
                store,
                out,
                32,
                extra={"teacher": teacher},
                options=options,
                log=messages.append,
            )
        except BaseException as err:  # noqa: BLE001 - reported by the test thread
            outcome["error"] = err

    messages: list[str] = []
    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    first = wait_for(
        lambda: latest_checkpoint_step(out, options)[0] or outcome,
        "the first checkpoint",
        timeout=RUN_TIMEOUT_S,
    )
    assert "error" not in outcome, outcome.get("error")
    assert first < steps, "the run finished before the outage"
    s3_server.stop()
    try:
        time.sleep(S3_OUTAGE_S)  # the outage itself
    finally:
        s3_server.start()
    # the run was going through the whole outage (a checkpoint a step: it met the outage while checkpointing)
    assert thread.is_alive() and latest_checkpoint_step(out, options)[0] < steps, (
        "the run ended during the outage"
    )
    thread.join(RUN_TIMEOUT_S)
    assert not thread.is_alive(), "distillation did not finish after the outage"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.step == steps
    assert [h["step"] for h in result.history] == list(range(1, steps + 1))
    ranks = _rank_nodes(out, options)
    assert ranks[0] != ranks[1] and set(ranks.values()) == {n.node_id for n in multinode_cluster.workers}
    assert load_bundle(result.bundle, options=options).metadata.stage == "student"
    restarts = [m for m in messages if "Ray Train stopped" in m]
    print(f"the outage stopped Ray Train {len(restarts)} time(s); the launcher resumed it each time")


def _read_one_epoch(config: dict) -> None:
    """A Ray Train worker that reads its shard of one epoch, as the training loop does, and writes the tile ids
    it saw and its node to S3 (the driver's only window on a worker on another node)."""
    import ray
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    ids = [
        str(t) for batch in shard.iter_batches(batch_size=64, batch_format="numpy") for t in batch["tile_id"]
    ]
    record = {"tile_ids": ids, "node_id": ray.get_runtime_context().get_node_id()}
    fs, root = storage.resolve(config["out"], config["options"])
    rank = ray.train.get_context().get_world_rank()
    storage.write_bytes_atomic(fs, storage.join(root, f"rank{rank}.json"), json.dumps(record).encode())


def test_each_worker_reads_a_disjoint_shard_of_the_epoch(multinode_cluster, s3_store):
    """The training data path (launcher.training_dataset and ingest_config, as run_training passes them to Ray
    Train) with one worker on each node: the two shards of an epoch share no tile, and together they are the
    train split (less at most one row per worker, which an equal split may hold back)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from s2o_platform.data.store import read_metadata, split_counts
    from s2o_platform.train.launcher import ingest_config, training_dataset

    store, options = s3_store
    out = "s3://s2o-test/mn-shards"
    metadata = read_metadata(store, options)
    train_rows = split_counts(store, options)["train"]
    cfg = load_config(TeacherConfig, TINY_CONFIGS / "teacher.yaml", ACROSS_NODES)
    TorchTrainer(
        _read_one_epoch,
        train_loop_config={"out": out, "options": options},
        scaling_config=ray.train.ScalingConfig(num_workers=2, placement_strategy="STRICT_SPREAD"),
        datasets={"train": training_dataset(store, metadata, train_rows, cfg, options)},
        dataset_config=ingest_config(),
        run_config=ray.train.RunConfig(
            storage_path="s2o-test/mn-shards-run", storage_filesystem=storage.resolve(out, options)[0]
        ),
    ).fit()
    fs, root = storage.resolve(out, options)
    reports = [json.loads(storage.read_bytes(fs, storage.join(root, f"rank{r}.json"))) for r in (0, 1)]
    assert reports[0]["node_id"] != reports[1]["node_id"]
    first, second = (set(r["tile_ids"]) for r in reports)
    assert len(first) == len(reports[0]["tile_ids"]) and len(second) == len(reports[1]["tile_ids"])
    assert not first & second
    assert train_rows - 2 <= len(first | second) <= train_rows and abs(len(first) - len(second)) <= 1
