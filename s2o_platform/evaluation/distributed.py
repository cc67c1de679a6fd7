"""The quality pass of `s2o eval` on a Ray cluster: Ray Data streams the split's tiles through one
actor pool per model setting (`map_batches`), each actor holding the model (on a GPU where the cluster
has them) and returning per-tile scores; the driver only aggregates.

Seeds: each batch is seeded with the evaluation seed plus a hash of its first tile id, so a tile's
noise does not depend on which actor scores it. Batches are formed in tile-id order.
"""

from __future__ import annotations

import numpy as np

from s2o_platform.bundle import Bundle
from s2o_platform.data.store import decode_batch, read_tiles
from s2o_platform.devices import cluster_cpu_hosts, cluster_gpus, inference_actors
from s2o_platform.evaluation.landcover import confusion_per_tile
from s2o_platform.evaluation.quality import (
    SettingOutput,
    inception_features,
    tile_scores,
    to_unit,
    uncertainty_pixels,
)
from s2o_platform.evaluation.spec import ModelSetting
from s2o_platform.evaluation.tiles import load_test_tiles
from s2o_platform.inference import LoadedModel, translate_tiles

SCORE_COLUMNS = (
    "psnr",
    "ssim",
    "colour_error",
    "finite",
    "grad_pred",
    "grad_true",
    "abs_to_sar",
    "abs_to_truth",
)
#: Per-tile pixel samples of an uncertainty pass (`uncertainty_pixels`), kept as (N, P) arrays.
UNCERTAINTY_COLUMNS = ("unc_spread", "unc_error")


class TileScorer(LoadedModel):
    """A Ray Data actor: store rows -> per-tile scores (and FID features) of one model setting."""

    def __init__(
        self,
        fid_weights: str | None,
        classifier: dict | None = None,
        uncertainty: int | None = None,
        **kwargs,
    ):
        import torch

        from s2o_platform.evaluation.landcover import PixelClassifier
        from s2o_platform.evaluation.quality import load_fid_network

        super().__init__(**kwargs)
        self.uncertainty = uncertainty
        self.fid = load_fid_network(fid_weights, self.device) if fid_weights else None
        self.classifier = None
        if classifier is not None:  # {"num_classes": K, "state": state dict}
            self.classifier = PixelClassifier(classifier["num_classes"])
            self.classifier.load_state_dict(classifier["state"])
            self.classifier.eval()
        torch.set_grad_enabled(False)

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = decode_batch(rows)
        order = np.argsort(batch["tile_id"])
        ids = batch["tile_id"][order]
        spread = None
        if self.uncertainty:  # keyed by tile id, as runner.translate_and_score keys them
            prediction, spread = self.run_tiles_with_uncertainty(
                batch["sar"][order], self.seed, self.uncertainty, keys=[str(i) for i in ids], output="sample"
            )
        else:
            prediction = self.translate(batch["sar"][order], str(ids[0]))
        unit, target = to_unit(prediction), to_unit(batch["optical"][order])
        valid = batch["valid"][order] if "valid" in batch else None
        out: dict[str, np.ndarray] = {
            "tile_id": ids.astype(str),
            **tile_scores(unit, target, to_unit(batch["sar"][order]), valid),
        }
        if spread is not None:
            out.update(uncertainty_pixels(spread, unit, target, valid))
        if self.classifier is not None and "landcover" in batch:
            out["landcover_confusion"] = confusion_per_tile(
                self.classifier, unit.nan_to_num(0.0), batch["landcover"][order]
            )
        if self.fid is not None:
            out["features"] = inception_features(self.fid, unit).astype(np.float32)
            out["real_features"] = inception_features(self.fid, target).astype(np.float32)
        return out


class RayQuality:
    """The quality pass over Ray Data actors (same interface as runner.LocalQuality)."""

    def __init__(self, options, classifier=None):
        from s2o_platform.data.store import split_counts
        from s2o_platform.ray_cluster import connect

        self.options = options
        self.classifier = (
            None
            if classifier is None
            else {
                "num_classes": classifier.num_classes,
                "state": {k: v.clone() for k, v in classifier.state_dict().items()},
            }
        )
        connect(None if options.address == "local" else options.address)
        self.gpus = cluster_gpus()
        # on CUDA where the cluster has GPUs, else the CPU
        self.actors = inference_actors(options.workers, self.gpus, cpu_hosts=cluster_cpu_hosts())
        self.available = split_counts(options.data, options.storage)[options.split]
        self.n_tiles = min(self.available, options.limit or self.available)
        self.where = f"on Ray Data, {options.workers} actor(s) per setting" + (
            f" with 1 GPU each ({self.gpus} in the cluster)" if self.gpus else " on CPU"
        )

    def dataset(self, count: int):
        ds = read_tiles(self.options.data, self.options.split, self.options.storage).sort("tile_id")
        return ds.limit(count) if count < self.available else ds

    def run(
        self, bundle: Bundle, setting: ModelSetting, count: int, keep: int, uncertainty: int | None = None
    ):
        o = self.options
        scored = self.dataset(count).map_batches(
            TileScorer,
            fn_constructor_kwargs=dict(
                bundle=setting.bundle,
                sampler=setting.sampler,
                steps=setting.steps,
                seed=o.seed,
                device=self.actors.device,
                dtype=o.dtype if self.gpus else "fp32",
                fid_weights=o.fid_weights,
                classifier=self.classifier,
                uncertainty=uncertainty,
                storage_options=o.storage,
                batch_size=o.batch_size,
                cpu_share=self.actors.cpu_share,
                compile=o.compile,
                warm_up=False,
            ),
            batch_size=o.batch_size,
            **self.actors.map_batches_args(),
        )
        columns: dict[str, list[np.ndarray]] = {}
        for batch in scored.iter_batches(batch_format="numpy", batch_size=None):
            for key, value in batch.items():
                columns.setdefault(key, []).append(value)
        merged = {k: np.concatenate(v) for k, v in columns.items()}
        order = np.argsort(merged["tile_id"])
        merged = {k: v[order] for k, v in merged.items()}
        scores = {k: merged[k].astype(np.float64) for k in SCORE_COLUMNS}
        for key in ("landcover_confusion", *UNCERTAINTY_COLUMNS):
            if key in merged:
                scores[key] = merged[key]
        # the sample grid: the first tiles, translated here with the driver's copy of the model
        first = load_test_tiles(o.data, o.split, keep, o.storage)
        preview = to_unit(
            translate_tiles(bundle, first["sar"], setting.sampler, setting.steps, seed=o.seed)
        ).numpy()
        return SettingOutput(
            scores=scores,
            features=merged["features"].astype(np.float64) if "features" in merged else None,
            predictions=preview,
            real_features=merged["real_features"].astype(np.float64) if "real_features" in merged else None,
        )
