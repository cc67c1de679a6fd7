"""`s2o eval`: every model setting on the same test tiles and seeds, in this process.

Every check that can fail (spec syntax, bundles present and fit for the store, sampler and steps
allowed, FID weights readable) runs before any tile is translated. A setting that fails while it runs
(non-finite output, an exception) becomes an error row; the others are still evaluated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from s2o_platform import storage
from s2o_platform.bundle import (
    Bundle,
    BundleError,
    BundleMetadata,
    check_bundle,
    check_fits,
    load_bundle,
    read_scheduler_config,
)
from s2o_platform.config import EvalConfig, dump_config
from s2o_platform.data.store import (
    SPLITS,
    TILE_SCHEMA,
    StoreMetadata,
    decode_landcover,
    decode_optical,
    optical_to_model,
    read_metadata,
    shard_paths,
)
from s2o_platform.devices import device_name, dtype_name, resolve_device, resolve_dtype
from s2o_platform.evaluation import landcover
from s2o_platform.evaluation.quality import (
    FID_SKIPPED,
    InceptionFeatures,
    SettingOutput,
    fid_from_features,
    inception_features,
    load_fid_network,
    paired_difference,
    ratio_of_means,
    tile_scores,
    to_unit,
    uncertainty_pixels,
)
from s2o_platform.evaluation.report import (
    FID_RECOMMENDED_SAMPLES,
    REFERENCE_DDIM_STEPS,
    Report,
    Row,
    add_speedups,
)
from s2o_platform.evaluation.spec import EvalError, ModelSetting, parse_model_spec, unique_labels
from s2o_platform.evaluation.speed import time_calls
from s2o_platform.evaluation.tiles import load_test_tiles
from s2o_platform.evaluation.uncertainty import calibration_table, finite_pairs, spearman
from s2o_platform.inference import resolve_sampler_for, translate_tiles
from s2o_platform.inference_compile import CompiledNetwork, compile_bundle, resolve_compile
from s2o_platform.tile_sampling import translate_tiles_with_uncertainty


@dataclass
class EvalRun:
    """One run of `s2o eval`: the store, the report folder and the fields of its EvalConfig."""

    data: str
    models: list[str]
    out: str
    split: str = "test"
    limit: int | None = None
    batch_size: int = 32
    fid_weights: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    compile: str = (
        "off"  # off | auto | default | max (inference_compile): every model, speed references included
    )
    seed: int = 0
    uncertainty: int = (
        0  # K samples per tile (0: none): how well their spread predicts the error (student, teacher)
    )
    repeats: int = 3
    ddpm_limit: int = 32  # ancestral DDPM walks every training step: its quality is measured on a subset
    sample_tiles: int = 4
    landcover_fit_tiles: int = (
        1024  # train tiles the land-cover classifier is fitted on (where the store has class maps)
    )
    references: bool = True  # time teacher DDPM and DDIM-50 for the speed-ups even when not asked for
    address: str | None = None  # a Ray cluster: the quality pass runs on Ray Data actors there
    workers: int = 1  # Ray Data actors per model setting (each takes a GPU where the cluster has them)
    storage: storage.StorageOptions = field(default_factory=storage.StorageOptions)
    mlflow_run_id: str | None = None  # also log the report into this MLflow run ($MLFLOW_TRACKING_URI)

    @classmethod
    def from_config(
        cls,
        config: EvalConfig,
        data: str,
        out: str,
        *,
        address: str | None = None,
        storage_options: storage.StorageOptions | None = None,
        mlflow_run_id: str | None = None,
    ) -> EvalRun:
        """The run's options from a resolved `s2o eval` config."""
        values = config.model_dump(mode="json", exclude={"speed_references"})
        return cls(
            data=data,
            out=out,
            address=address,
            storage=storage_options or storage.StorageOptions(),
            mlflow_run_id=mlflow_run_id,
            references=config.speed_references,
            **values,
        )

    def to_config(self) -> EvalConfig:
        """The settings of this run as the config `s2o eval --config` reads (what REPORT_DIR/config.yaml holds).
        A value the config would refuse but the run accepts (a library caller's) is kept as it is."""
        values = {name: getattr(self, name) for name in EvalConfig.model_fields if name != "speed_references"}
        values["models"] = list(values["models"])
        try:
            return EvalConfig(speed_references=self.references, **values)
        except ValueError:
            return EvalConfig.model_construct(speed_references=self.references, **values)


#: The name before 2026-12 (kept so existing callers keep working).
EvalOptions = EvalRun


#: The resolved config of the run, saved in REPORT_DIR beside the report (yaml.safe_dump).
CONFIG_FILE = "config.yaml"


@dataclass
class PlannedSetting:
    setting: ModelSetting  # sampler and steps resolved
    metadata: BundleMetadata
    speed_only: bool = False


def check_fits_store(metadata: BundleMetadata, where: str, store: StoreMetadata, data: str) -> None:
    """bundle.check_fits (the one rule), as an EvalError."""
    try:
        check_fits(
            metadata, store, where, data, advice="evaluate it on a store ingested with the same settings"
        )
    except BundleError as err:
        raise EvalError(str(err)) from None


def plan(options: EvalRun) -> tuple[StoreMetadata, list[PlannedSetting]]:
    """Resolve and check every setting against its bundle and the store; no network is loaded."""
    if options.split not in SPLITS:
        raise EvalError(f"--split {options.split!r}: choose from {list(SPLITS)}")
    if options.batch_size < 1 or (options.limit is not None and options.limit < 1):
        raise EvalError("--batch-size and --limit must be >= 1")
    if options.uncertainty == 1 or options.uncertainty < 0:
        raise EvalError(
            f"--uncertainty {options.uncertainty}: a spread needs at least 2 samples per tile (0: no uncertainty)"
        )
    if not options.models:
        raise EvalError(
            "no --model given: pass at least one NAME=BUNDLE[@SAMPLER:STEPS] (or list them under models: in --config)"
        )
    try:
        store = read_metadata(options.data, options.storage)
    except ValueError as err:
        raise EvalError(str(err)) from None
    settings = [s for text in options.models for s in _parse(text)]
    planned: list[PlannedSetting] = []
    metadata_cache: dict[str, tuple[BundleMetadata, dict | None]] = {}
    for s in settings:
        if s.bundle not in metadata_cache:
            try:
                metadata_cache[s.bundle] = (
                    check_bundle(s.bundle, options.storage),
                    read_scheduler_config(s.bundle, options.storage),
                )
            except BundleError as err:
                raise EvalError(f"--model {s.name}: {err}") from None
            check_fits_store(metadata_cache[s.bundle][0], s.bundle, store, options.data)
        metadata, scheduler = metadata_cache[s.bundle]
        planned.append(PlannedSetting(_resolve(s, metadata, scheduler), metadata))
    try:
        unique_labels([p.setting for p in planned])
    except ValueError as err:
        raise EvalError(str(err)) from None
    if options.references:
        planned += _speed_references(planned, metadata_cache)
    return store, planned


def _parse(text: str) -> list[ModelSetting]:
    try:
        return parse_model_spec(text)
    except ValueError as err:
        raise EvalError(str(err)) from None


def _resolve(setting: ModelSetting, metadata: BundleMetadata, scheduler: dict | None) -> ModelSetting:
    try:
        sampler, steps = resolve_sampler_for(metadata, setting.bundle, setting.sampler, setting.steps)
    except BundleError as err:
        raise EvalError(f"--model {setting.name}: {err}") from None
    if sampler == "ddpm":
        all_steps = int(scheduler["num_train_timesteps"])
        if setting.steps is not None and setting.steps != all_steps:
            raise EvalError(
                f"--model {setting.name}: ancestral DDPM walks all {all_steps} training steps of {setting.bundle}; "
                f"ask for ddpm:{all_steps} (or ddim:{setting.steps} for fewer steps)"
            )
        steps = all_steps
    return replace(setting, sampler=sampler, steps=steps)


def _speed_references(planned: list[PlannedSetting], cache: dict) -> list[PlannedSetting]:
    teacher = next((p for p in planned if p.metadata.stage == "teacher"), None)
    if teacher is None:
        return []
    extra = []
    scheduler = cache[teacher.setting.bundle][1]
    wanted = [("ddpm", int(scheduler["num_train_timesteps"])), ("ddim", REFERENCE_DDIM_STEPS)]
    for sampler, steps in wanted:
        if not any(
            p.metadata.stage == "teacher" and p.setting.sampler == sampler and p.setting.steps == steps
            for p in planned
        ):
            s = ModelSetting(teacher.setting.name, teacher.setting.bundle, sampler, steps)
            extra.append(PlannedSetting(s, teacher.metadata, speed_only=True))
    return extra


def fit_landcover_classifier(
    options: EvalRun, test_tiles: dict[str, np.ndarray], store: StoreMetadata, log: Callable[[str], None]
) -> tuple[landcover.FittedClassifier | None, dict]:
    """Fit the land-cover classifier on the train split's ground truth, where the store carries class maps.

    Returns the classifier (None where there are no class maps) and what the report says about it.
    """
    if "landcover" not in test_tiles:
        return None, {"status": f"no class maps in the {options.split} split: land-cover scores skipped"}
    train = _train_ground_truth(options)
    if train is None:
        return None, {"status": "the train split carries no class maps: land-cover scores skipped"}
    names = list(store.extra.get("landcover_classes") or [])
    began = time.perf_counter()
    try:
        num_classes = max(len(names), landcover.num_classes_of(train["landcover"]))
        fitted = landcover.fit_classifier(
            to_unit(train["optical"]).numpy(), train["landcover"], num_classes, seed=options.seed
        )
    except ValueError as err:
        return None, {"status": f"land-cover scores skipped: {err}"}
    names += [str(k) for k in range(len(names), num_classes)]
    heldout = landcover.confusion_per_tile(
        fitted.model, to_unit(test_tiles["optical"]), test_tiles["landcover"]
    ).sum(axis=0)
    heldout_accuracy = landcover.accuracy(heldout)
    if heldout_accuracy is None:
        return None, {
            "status": f"the {options.split} tiles' class maps hold no labelled pixel: land-cover scores skipped"
        }
    info = {
        "status": "fitted",
        "classes": names,
        "train_tiles": fitted.train_tiles,
        "train_accuracy": fitted.train_accuracy,
        "heldout_accuracy": heldout_accuracy,
        "heldout_miou": landcover.mean_iou(heldout),
        "heldout_tiles": len(test_tiles["optical"]),
    }
    log(
        f"[eval] land-cover classifier fitted on {fitted.train_tiles} train tiles' ground truth in "
        f"{time.perf_counter() - began:.0f} s: accuracy {info['heldout_accuracy']:.3f} on the real optical test tiles"
    )
    return fitted, info


def _train_ground_truth(options: EvalRun) -> dict[str, np.ndarray] | None:
    """Optical tiles and class maps of the train split (the first `landcover_fit_tiles` by tile id); only the
    columns the classifier needs are read, so a large store costs no more than those tiles."""
    paths = shard_paths(options.data, ["train"], options.storage)
    if not paths:
        return None
    fs, _ = storage.resolve(options.data, options.storage)
    columns = ["tile_id", "optical", "tile_size", "landcover"]
    schema = pa.schema(
        [TILE_SCHEMA.field(c) for c in columns]
    )  # shards written before the column existed read as null
    table = pq.ParquetDataset(paths, filesystem=fs, schema=schema).read(columns=columns)
    table = (
        table.filter(pc.is_valid(table.column("landcover")))
        .sort_by("tile_id")
        .slice(0, options.landcover_fit_tiles)
    )
    if table.num_rows == 0:
        return None
    sizes = table.column("tile_size").to_numpy()
    optical = np.stack(
        [decode_optical(b, int(n)) for b, n in zip(table.column("optical").to_pylist(), sizes)]
    )
    return {
        "optical": optical_to_model(optical),
        "landcover": np.stack(
            [decode_landcover(b, int(n)) for b, n in zip(table.column("landcover").to_pylist(), sizes)]
        ),
    }


class LocalQuality:
    """The quality pass in this process, over tiles already in memory."""

    def __init__(
        self,
        tiles: dict[str, np.ndarray],
        options: EvalRun,
        fid_network: InceptionFeatures | None,
        classifier: landcover.PixelClassifier | None = None,
    ):
        self.tiles, self.options, self.fid_network, self.classifier = tiles, options, fid_network, classifier
        self.n_tiles = len(tiles["sar"])
        self.where = "in this process"
        self._real: np.ndarray | None = None

    def run(
        self, bundle: Bundle, setting: ModelSetting, count: int, keep: int, uncertainty: int | None = None
    ) -> SettingOutput:
        o = self.options
        labels = self.tiles["landcover"][:count] if self.classifier is not None else None
        valid = self.tiles["valid"][:count] if "valid" in self.tiles else None
        out = translate_and_score(
            bundle,
            setting,
            self.tiles["sar"][:count],
            self.tiles["optical"][:count],
            o.seed,
            o.batch_size,
            self.fid_network,
            keep=keep,
            classifier=self.classifier,
            labels=labels,
            valid=valid,
            uncertainty=uncertainty,
            tile_ids=self.tiles["tile_id"][:count],
        )
        if self.fid_network is not None:
            if self._real is None:
                self._real = np.concatenate(
                    [
                        inception_features(
                            self.fid_network, to_unit(self.tiles["optical"][s : s + o.batch_size])
                        )
                        for s in range(0, self.n_tiles, o.batch_size)
                    ]
                )
            out.real_features = self._real[:count]
        return out


def translate_and_score(
    bundle: Bundle,
    setting: ModelSetting,
    sar: np.ndarray,
    optical: np.ndarray,
    seed: int,
    batch_size: int,
    fid_network: InceptionFeatures | None = None,
    keep: int = 0,
    first_batch_index: int = 0,
    classifier: landcover.PixelClassifier | None = None,
    labels: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    uncertainty: int | None = None,
    tile_ids: np.ndarray | None = None,
) -> SettingOutput:
    """Translate tiles batch by batch (batch i seeded with seed + i) and score each tile (with land-cover
    confusion counts where a classifier and the tiles' class maps are given).

    With `uncertainty` K: each tile is sampled K times, keyed by its tile id (so the Ray Data pass draws the same
    noise), the first sample is scored as above, and a fixed sample of its pixels' spread and absolute error is
    kept (`uncertainty_pixels`)."""
    if uncertainty and tile_ids is None:
        raise ValueError("an uncertainty pass keys each tile's samples by its tile id: pass tile_ids")
    scores: dict[str, list[np.ndarray]] = {}
    features, kept = [], []
    for i, start in enumerate(range(0, len(sar), batch_size)):
        window = slice(start, start + batch_size)
        spread = None
        if uncertainty:
            prediction, spread = translate_tiles_with_uncertainty(
                bundle,
                sar[window],
                uncertainty,
                setting.sampler,
                setting.steps,
                seed=seed,
                batch_size=batch_size,
                keys=[str(t) for t in tile_ids[window]],
                output="sample",
            )
        else:
            prediction = translate_tiles(
                bundle,
                sar[window],
                setting.sampler,
                setting.steps,
                seed=seed + first_batch_index + i,
                batch_size=batch_size,
            )
        unit, target = to_unit(prediction), to_unit(optical[window])
        batch_valid = None if valid is None else valid[window]
        batch_scores = tile_scores(unit, target, to_unit(sar[window]), batch_valid)
        if spread is not None:
            batch_scores.update(uncertainty_pixels(spread, unit, target, batch_valid))
        if classifier is not None and labels is not None:
            batch_scores["landcover_confusion"] = landcover.confusion_per_tile(
                classifier, unit.nan_to_num(0.0), labels[start : start + batch_size]
            )
        for key, value in batch_scores.items():
            scores.setdefault(key, []).append(value)
        if fid_network is not None:
            features.append(inception_features(fid_network, unit))
        if sum(len(k) for k in kept) < keep:
            kept.append(unit.nan_to_num(0.0).numpy())
    return SettingOutput(
        scores={k: np.concatenate(v) for k, v in scores.items()},
        features=np.concatenate(features) if features else None,
        predictions=np.concatenate(kept)[:keep] if kept else np.zeros((0,)),
    )


@torch.no_grad()
def _translate(bundle: Bundle, tiles: np.ndarray, sampler: str, steps: int) -> np.ndarray:
    return translate_tiles(bundle, tiles, sampler, steps, batch_size=len(tiles))


def measure_latency(
    bundle: Bundle, setting: ModelSetting, sar: np.ndarray, device: torch.device, repeats: int
) -> float:
    """Milliseconds per image at batch 1: median of `repeats` calls after a warm-up call.

    Ancestral DDPM walks every training step in each call: it is warmed up with a 2-step DDIM call
    (same network, same shapes) and timed once.
    """
    one = sar[:1]
    if setting.sampler == "ddpm":
        _translate(bundle, one, "ddim", 2)
        return (
            time_calls(
                lambda: _translate(bundle, one, "ddpm", setting.steps), device, repeats=1, warmup=0
            ).median
            * 1000.0
        )
    return (
        time_calls(lambda: _translate(bundle, one, setting.sampler, setting.steps), device, repeats).median
        * 1000.0
    )


def measure_throughput(
    bundle: Bundle, setting: ModelSetting, sar: np.ndarray, batch_size: int, device: torch.device
) -> float:
    """Images per second translating one batch of `batch_size` tiles (after a warm-up at that shape on GPU, or
    when the network is compiled: a new shape compiles on its first call)."""
    batch = np.resize(sar, (batch_size, *sar.shape[1:])) if len(sar) < batch_size else sar[:batch_size]
    if device.type == "cuda" or isinstance(
        bundle.model, CompiledNetwork
    ):  # a new batch shape: kernels picked first
        _translate(bundle, batch, "ddim", 2) if setting.sampler == "ddpm" else _translate(
            bundle, batch, setting.sampler, setting.steps
        )
    seconds = time_calls(
        lambda: _translate(bundle, batch, setting.sampler, setting.steps), device, repeats=1, warmup=0
    ).median
    return batch_size / seconds


def summarise(row: Row, scores: dict[str, np.ndarray]) -> None:
    n = len(scores["finite"])
    bad = int(n - scores["finite"].sum())
    row.tiles = n
    if bad:
        row.error = f"non-finite output (NaN/inf) in {bad} of {n} tiles"
        return
    for key in ("psnr", "ssim", "colour_error"):
        setattr(row, key, float(np.mean(scores[key])))
    row.sharpness_ratio = ratio_of_means(scores["grad_pred"], scores["grad_true"])
    if "abs_to_sar" in scores:
        row.identity_ratio = ratio_of_means(scores["abs_to_sar"], scores["abs_to_truth"])
    if "landcover_confusion" in scores:
        confusion = scores["landcover_confusion"].sum(axis=0)
        row.landcover_accuracy = landcover.accuracy(confusion)
        row.landcover_miou = landcover.mean_iou(confusion)


def summarise_uncertainty(row: Row, scores: dict[str, np.ndarray], samples: int) -> None:
    """Row.uncertainty: how well the per-pixel spread of `samples` draws predicts the first draw's absolute error
    (Spearman's rho, an equal-count calibration table, the means), from the kept pixels."""
    spread, error = finite_pairs(scores["unc_spread"], scores["unc_error"])
    row.uncertainty = {
        "samples": samples,
        "pixels": int(spread.size),
        "spearman": spearman(spread, error),
        "mean_spread": float(spread.mean()) if spread.size else None,
        "mean_abs_error": float(error.mean()) if error.size else None,
        "calibration": calibration_table(spread, error),
    }


def add_paired(rows: list[Row], per_tile_psnr: dict[str, np.ndarray]) -> str | None:
    """Per-tile PSNR difference of every scored row against the reference setting, with a bootstrap interval.

    The reference is the teacher's DDIM-50 where it was scored, else the first scored row. Rows scored on
    fewer tiles (ancestral DDPM) are compared on the tiles both have. Returns the reference's label.
    """
    scored = [r for r in rows if r.label in per_tile_psnr and not r.error and not r.speed_only]
    reference = next(
        (
            r
            for r in scored
            if r.stage == "teacher" and r.sampler == "ddim" and r.steps == REFERENCE_DDIM_STEPS
        ),
        scored[0] if scored else None,
    )
    if reference is None:
        return None
    base = per_tile_psnr[reference.label]
    for row in scored:
        values = per_tile_psnr[row.label]
        n = min(len(values), len(base))
        difference = paired_difference(values[:n], base[:n])
        row.paired = {
            "reference": reference.label,
            "tiles": n,
            "delta_psnr": difference["delta"],
            "ci95": difference["ci95"],
        }
    return reference.label


def run_evaluation(
    options: EvalRun, log: Callable[[str], None] = print
) -> tuple[Report, dict[str, np.ndarray]]:
    store, planned = plan(options)
    device = _checked(resolve_device, options.device)
    dtype = _checked(resolve_dtype, options.dtype, device)
    compile_plan = _checked(resolve_compile, options.compile, device, log)
    fid_network = None
    if options.fid_weights:
        try:
            fid_network = load_fid_network(options.fid_weights, device)
        except ValueError as err:
            raise EvalError(str(err)) from None
    # the land-cover classifier is fitted on the train split and checked on the test tiles' ground truth
    # (on a cluster the driver reads only a bounded number of test tiles: for that check, speed and the grid)
    driver_limit = (
        min(options.limit or 10**9, options.landcover_fit_tiles) if options.address else options.limit
    )
    tiles = load_test_tiles(options.data, options.split, driver_limit, options.storage)
    classifier, landcover_info = fit_landcover_classifier(options, tiles, store, log)
    if options.address:
        from s2o_platform.evaluation.distributed import RayQuality

        quality = RayQuality(options, classifier.model if classifier else None)
        # the driver keeps only what speed and the sample grid need
        tiles = {k: v[: max(options.batch_size, options.sample_tiles)] for k, v in tiles.items()}
    else:
        quality = LocalQuality(tiles, options, fid_network, classifier.model if classifier else None)
    n_tiles = quality.n_tiles
    log(
        f"[eval] {n_tiles} {options.split} tiles from {options.data}; {len(planned)} settings; quality {quality.where}, "
        f"speed on {device_name(device)} ({dtype_name(dtype)}, {compile_plan.describe()})"
    )
    keep = min(options.sample_tiles, len(tiles["sar"]))
    samples = {
        "SAR (first channel)": ((tiles["sar"][:keep, :1] + 1) / 2).clip(0, 1).transpose(0, 2, 3, 1),
        "ground truth": ((tiles["optical"][:keep] + 1) / 2).clip(0, 1).transpose(0, 2, 3, 1),
    }
    rows: list[Row] = []
    notes: list[str] = []
    bundles: dict[str, Bundle] = {}
    per_tile_psnr: dict[str, np.ndarray] = {}
    for p in planned:
        s = p.setting
        row = Row(
            model=s.name,
            label=s.label,
            bundle=s.bundle,
            stage=p.metadata.stage,
            sampler=s.sampler,
            steps=s.steps,
            speed_only=p.speed_only,
        )
        rows.append(row)
        started = time.perf_counter()
        try:
            if s.bundle not in bundles:
                bundles[s.bundle] = compile_bundle(
                    load_bundle(s.bundle, device=device, options=options.storage, dtype=dtype),
                    compile_plan,
                    max_batch=options.batch_size,
                    log_fn=log,
                )
            bundle = bundles[s.bundle]
            if not p.speed_only:
                count = min(n_tiles, options.ddpm_limit) if s.sampler == "ddpm" else n_tiles
                if count < n_tiles:
                    row.notes.append(
                        f"quality on the first {count} of {n_tiles} tiles (ancestral DDPM is slow; --ddpm-limit)"
                    )
                samples_per_tile = options.uncertainty if s.sampler != "direct" else 0
                if options.uncertainty and not samples_per_tile:
                    row.notes.append(
                        "no uncertainty: one forward pass per tile draws no noise (deterministic), so there is "
                        "no spread to sample"
                    )
                out = quality.run(bundle, s, count, keep, uncertainty=samples_per_tile)
                summarise(row, out.scores)
                if samples_per_tile and not row.error:
                    summarise_uncertainty(row, out.scores, samples_per_tile)
                if not row.error:
                    per_tile_psnr[s.label] = out.scores["psnr"]
                    samples[s.label] = out.predictions.transpose(0, 2, 3, 1)
                    _fid(row, out.features, out.real_features)
            if not row.error:
                timed_batch = (
                    None
                    if p.speed_only or (s.sampler == "ddpm" and device.type == "cpu")
                    else options.batch_size
                )
                if s.sampler == "ddpm" and not p.speed_only and timed_batch is None:
                    row.notes.append(
                        "throughput not timed: ancestral DDPM at a full batch takes too long on CPU"
                    )
                row.latency_ms = measure_latency(bundle, s, tiles["sar"], device, options.repeats)
                if timed_batch:
                    row.throughput = measure_throughput(bundle, s, tiles["sar"], timed_batch, device)
        except Exception as err:  # noqa: BLE001 - one broken model must not stop the report
            row.error = f"{type(err).__name__}: {err}"
        log(
            f"[eval] {row.label}{' (speed reference)' if p.speed_only else ''}: "
            + (
                f"error: {row.error}"
                if row.error
                else f"PSNR {_f(row.psnr)} dB, SSIM {_f(row.ssim, '.3f')}, colour err {_f(row.colour_error)}, "
                f"{row.latency_ms:.1f} ms/img at batch 1"
                + (f", uncertainty rho {_f(row.uncertainty['spearman'], '.2f')}" if row.uncertainty else "")
            )
            + f" ({time.perf_counter() - started:.0f} s)"
        )
    used = add_speedups(rows)
    paired_reference = add_paired(rows, per_tile_psnr)
    fid_counts = {r.fid_samples for r in rows if r.fid is not None}
    for r in rows:
        if r.fid is not None and r.fid_samples < FID_RECOMMENDED_SAMPLES:
            r.notes.append(
                f"FID from {r.fid_samples} images: below the {FID_RECOMMENDED_SAMPLES} that make FID stable; "
                "compare it only with rows of the same count"
            )
    if len(fid_counts) > 1:
        notes.append(
            f"FID rows use different sample counts ({', '.join(map(str, sorted(fid_counts)))}): "
            "their FIDs are not comparable with each other"
        )
    for key, label in used.items():
        if label is None:
            notes.append(
                f"speed-up vs teacher {key.upper()}: not measured (no teacher bundle among the models)"
            )
    context = {
        "data": options.data,
        "split": options.split,
        "tiles": n_tiles,
        "seed": options.seed,
        "device": str(device),
        "device_name": device_name(device),
        "dtype": dtype_name(dtype),
        "compile": compile_plan.describe(),
        "threads": torch.get_num_threads(),
        "batch_size": options.batch_size,
        "repeats": options.repeats,
        "fid_status": f"FID with {options.fid_weights}" if options.fid_weights else FID_SKIPPED,
        "quality_pass": quality.where,
        "speedup_references": used,
        "paired_reference": paired_reference,
        "uncertainty_samples": options.uncertainty or None,
        "landcover_classifier": landcover_info,
        "notes": notes,
    }
    return Report(rows=rows, context=context), samples


def _fid(row: Row, fake: np.ndarray | None, real: np.ndarray | None) -> None:
    if fake is None or real is None:
        row.fid_note = FID_SKIPPED
        return
    try:
        row.fid = fid_from_features(real, fake)
        row.fid_samples = len(fake)
    except ValueError as err:
        row.fid_note = f"FID not computed: {err}"


def _f(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _checked(fn, *args):
    try:
        return fn(*args)
    except ValueError as err:
        raise EvalError(str(err)) from None


def evaluate(options: EvalRun, log: Callable[[str], None] = print) -> tuple[Report, list[Path]]:
    """Run the evaluation and write REPORT_DIR; returns the report and the files written."""
    from s2o_platform.evaluation.report import write_report
    from s2o_platform.tracking import log_evaluation, resolve_uri

    if options.mlflow_run_id and not resolve_uri():
        raise EvalError(
            "--mlflow-run-id needs the tracking server in MLFLOW_TRACKING_URI (e.g. http://127.0.0.1:5000)"
        )
    report, samples = run_evaluation(options, log)
    written = write_report(report, Path(options.out), samples)
    config_path = Path(options.out) / CONFIG_FILE
    config_path.write_text(dump_config(options.to_config()))
    written.append(config_path)
    if options.mlflow_run_id and log_evaluation(
        options.mlflow_run_id, report, written, Path(options.out).name
    ):
        log(
            f"report logged to MLflow run {options.mlflow_run_id} (metrics eval/<setting>/..., artefacts eval/{Path(options.out).name}/)"
        )
    return report, written
