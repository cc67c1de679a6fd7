"""`s2o demo`: the whole platform end to end on one machine, on an embedded default.

    synthetic tile store (+ the real SEN1-2 sample, where present)
      -> teacher -> adversarial consistency distillation (and the no-adversarial ablation) -> pix2pix
      -> evaluation report (table, trade-off plot, sample grid)
      -> archive translation of synthetic georeferenced scenes into COGs
      -> Ray Serve up, real HTTP requests translated, Serve shut down
      -> a summary naming every artefact and the headline figures

Each stage records what it produced in OUT/stages/<stage>.json when it succeeds; a re-run reuses
those stages (and their artefacts) unless --force, which redoes everything from an empty folder.
All of it runs on one local Ray cluster started here; nothing leaves the machine.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from s2o_platform.config import PRESETS_DIR, STUDENT_MAX_STEPS, StageConfig, dump_config, load_config
from s2o_platform.errors import S2OError

# The tiny presets shipped in the package (copies of the repository's configs/tiny/, the source of truth),
# so that the demo runs the same from a checkout and from an installed wheel.
CONFIGS = PRESETS_DIR / "tiny"


class DemoPreset(StageConfig):
    """How much work each stage does. Every preset uses the tiny architectures (32 px tiles).

    `s2o demo --preset NAME` picks one of PRESETS; --config FILE and --set key=value change its keys (the demo's
    config: unknown keys are errors). The resolved preset is saved as OUT/config.yaml."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="the preset --preset chose (kept when other keys are changed)")
    use_gpu: bool = Field(description="train on a GPU and serve on it (the gpu-small preset)")
    pairs: int = Field(ge=1, description="tile pairs of the synthetic store")
    scene_size: int = Field(
        ge=32, description="side in px of the synthetic georeferenced scene translated into a COG"
    )
    batch_size: int | None = Field(
        ge=1, description="per training worker; null: each stage's preset batch (configs/tiny/)"
    )
    teacher_steps: int = Field(ge=1, description="optimizer steps of the diffusion teacher")
    distill_steps: int = Field(
        ge=1, description="optimizer steps of each distillation (the student and its ablation)"
    )
    gan_steps: int = Field(ge=1, description="optimizer steps of the pix2pix baseline")
    eval_limit: int = Field(ge=1, description="test tiles the evaluation scores")
    student_steps: tuple[Annotated[int, Field(ge=1, le=STUDENT_MAX_STEPS)], ...] = Field(
        (1, 4),
        min_length=1,
        description="the student's step counts evaluated (the last also for the ablation)",
    )
    speed_references: bool = Field(
        True, description="also time the teacher's 1000-step DDPM (~25 s a call on 2 CPU cores)"
    )


PRESETS = {
    # Sized to finish within a quarter of an hour on 2 CPU cores with models that clearly learn (README:
    # measured time and quality); 2048 pairs leave more than 128 test tiles to measure on.
    "tiny": DemoPreset(
        name="tiny",
        use_gpu=False,
        pairs=2048,
        scene_size=384,
        batch_size=None,
        teacher_steps=440,  # 500 ran 15.3 min in all on a busy day; 440 keeps a margin under 15 (README)
        distill_steps=60,
        gan_steps=300,
        eval_limit=128,
    ),
    # The smallest setting: every stage runs, for checking the wiring (the test suite runs this).
    "smoke": DemoPreset(
        name="smoke",
        use_gpu=False,
        pairs=256,
        scene_size=128,
        batch_size=8,
        teacher_steps=10,
        distill_steps=4,
        gan_steps=10,
        eval_limit=8,
        student_steps=(1,),
        speed_references=False,
    ),
    # One GPU: the same pipeline with longer training, so the figures mean more.
    "gpu-small": DemoPreset(
        name="gpu-small",
        use_gpu=True,
        pairs=4096,
        scene_size=1024,
        batch_size=None,
        teacher_steps=3000,
        distill_steps=600,
        gan_steps=2000,
        eval_limit=256,
    ),
}


class DemoError(S2OError, RuntimeError):
    """A stage failed; the message says which and why (earlier stages' artefacts are kept)."""

    exit_code = 1  # `s2o demo`: a failed stage (or an unknown preset) exits 1


def choose_preset(name: str | None) -> DemoPreset:
    if name is None:
        import torch

        name = "gpu-small" if torch.cuda.is_available() else "tiny"
    if name not in PRESETS:
        raise DemoError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def resolve_preset(
    name: str | None, config: str | Path | None = None, overrides: list[str] | None = None
) -> DemoPreset:
    """The demo's settings: the preset (`--preset`, else the automatic choice) < --config FILE < --set key=value.
    Raises DemoError for an unknown preset, config.ConfigError for an unknown key or a bad value."""
    preset = choose_preset(name)
    if config is None and not overrides:
        return preset
    return load_config(
        DemoPreset,
        config,
        overrides,
        base=preset.model_dump(mode="json"),
        base_source=f"preset {preset.name}",
    )


def real_sample_dir() -> Path | None:
    """The real SEN1-2 sample: $S2O_SHARED_DATA, else ../shared/data/real beside the repository when the
    package runs from a checkout (an installed package has no repository beside it), where present."""
    import os

    if "S2O_SHARED_DATA" in os.environ:
        candidate = Path(os.environ["S2O_SHARED_DATA"])
    else:
        checkout = Path(__file__).resolve().parents[1]
        if not (checkout / "pyproject.toml").is_file():
            return None
        candidate = checkout.parent / "shared" / "data" / "real"
    return candidate if (candidate / "sar").is_dir() and (candidate / "optical").is_dir() else None


class Demo:
    def __init__(
        self, out: str | Path, preset: DemoPreset, force: bool = False, log: Callable[[str], None] = print
    ):
        self.out, self.preset, self.log = Path(out).resolve(), preset, log
        if force and self.out.exists():
            self.log(f"[demo] --force: removing {self.out}")
            shutil.rmtree(self.out)
        (self.out / "stages").mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(dump_config(preset))  # the resolved preset this run uses
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}

    # -- bookkeeping ----------------------------------------------------------------------------

    def stage(self, name: str, title: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        marker = self.out / "stages" / f"{name}.json"
        if marker.exists():
            self.log(f"[demo] {title}: done in an earlier run, reusing it ({marker})")
            return json.loads(marker.read_text())
        self.log(f"[demo] {title} ... ({self.elapsed()} so far)")
        began = time.perf_counter()
        try:
            result = run()
        except Exception as err:  # noqa: BLE001 - say which stage failed; earlier artefacts stay for the re-run
            raise DemoError(
                f"stage {name!r} failed: {type(err).__name__}: {err}. Earlier stages are kept in "
                f"{self.out}; run the same command again to retry from here."
            ) from err
        result["seconds"] = round(time.perf_counter() - began, 1)
        self.timings[name] = result["seconds"]
        marker.write_text(json.dumps(result, indent=2))
        self.log(f"[demo] {title}: done in {result['seconds']:.0f} s")
        return result

    def elapsed(self) -> str:
        seconds = int(time.perf_counter() - self.started)
        return f"{seconds // 60}m{seconds % 60:02d}s"

    # -- stages ---------------------------------------------------------------------------------

    def make_store(self) -> dict[str, Any]:
        from s2o_platform.data.synth_writer import run_synth

        store, scenes = self.out / "store", self.out / "scenes"
        summary = run_synth(
            str(store),
            pairs=self.preset.pairs,
            size=32,
            seed=0,
            scenes_dir=str(scenes),
            n_scene_files=1,
            scene_size=self.preset.scene_size,
            progress=False,
        )
        return {
            "store": str(store),
            "scenes": str(scenes / "sar"),
            "tiles": summary.tiles,
            "baselines": summary.baselines,
        }

    def make_real_store(self, real: Path) -> dict[str, Any]:
        from s2o_platform.data.ingest import run_ingest

        store = self.out / "real-store"
        summary = run_ingest(
            [str(real)], str(store), tile_size=32, test_fraction=0.5, val_fraction=0.0, progress=False
        )
        if not summary.total_written:
            raise DemoError(f"no tiles ingested from {real}: {summary.skipped[:3]}")
        return {"store": str(store), "source": str(real), "tiles": dict(summary.tiles_written)}

    def train(
        self,
        stage: str,
        config_file: str,
        data: str,
        out: str,
        steps: int,
        overrides: list[str],
        extra: dict | None = None,
    ) -> dict[str, Any]:
        from s2o_platform.config import load_config
        from s2o_platform.train.launcher import run_training
        from s2o_platform.train.runtime import get_stage

        p = self.preset
        batch = [f"train.batch_size={p.batch_size}"] if p.batch_size else []
        cfg = load_config(
            get_stage(stage).config_model,
            CONFIGS / config_file,
            [
                f"train.max_steps={steps}",
                *batch,
                f"checkpoint.every_steps={steps}",
                f"train.log_every_steps={max(1, steps // 10)}",
                f"scaling.use_gpu={str(p.use_gpu).lower()}",
                "scaling.num_workers=1",
                *overrides,
            ],
        )
        result = run_training(
            stage, cfg, data, out, tile_size=cfg.model_tile_size(), extra=extra, log=self.log
        )
        metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
        return {"run": out, "bundle": result.bundle, "steps": result.step, "metrics": metrics}

    def evaluate(
        self, data: str, out: str, models: list[str], limit: int, references: bool
    ) -> dict[str, Any]:
        from s2o_platform.evaluation.runner import EvalRun, evaluate

        # one timed call per setting: the teacher's 1000-step reference alone takes ~25 s a call on 2 CPU cores
        options = EvalRun(
            data=data,
            models=models,
            out=out,
            limit=limit,
            batch_size=32,
            repeats=1,
            references=references,
            ddpm_limit=4,
        )
        report, files = evaluate(options, log=self.log)
        keys = (
            "label",
            "tiles",
            "psnr",
            "ssim",
            "paired",
            "sharpness_ratio",
            "identity_ratio",
            "landcover_accuracy",
            "landcover_miou",
            "latency_ms",
            "speedup_vs_ddim",
            "speedup_vs_ddpm",
            "error",
        )
        rows = [{k: r.__dict__[k] for k in keys} for r in report.rows if not r.speed_only]
        landcover = report.context.get("landcover_classifier") or {}
        return {
            "report": out,
            "files": [str(f) for f in files],
            "rows": rows,
            "landcover_heldout_accuracy": landcover.get("heldout_accuracy"),
        }

    def translate(self, scenes: str, model: str) -> dict[str, Any]:
        from s2o_platform.translate.pipeline import TranslateRun, run_translate

        dest = self.out / "translated"
        summary = run_translate(
            TranslateRun(source=scenes, model=model, dest=str(dest), progress=False), log=self.log
        )
        if summary.failed:
            raise DemoError(f"archive translation failed for {summary.failed}")
        outputs = sorted(str(p) for p in dest.rglob("*.tif"))
        truth = Path(scenes).parent / "optical"
        quality = (
            scene_quality(outputs[0], truth / Path(outputs[0]).name)
            if outputs and (truth / Path(outputs[0]).name).is_file()
            else {}
        )
        return {
            "dest": str(dest),
            "outputs": outputs,
            "tiles": summary.tiles,
            "tiles_per_s": round(summary.tiles_per_s, 1),
            "gallery": str(dest / "index.html"),
            "catalog": str(dest / "catalog.json"),
            **quality,
        }

    def serve(self, model: str, scenes: str, real: Path | None) -> dict[str, Any]:
        import requests
        from ray import serve

        from s2o_platform.serving.runner import free_port, plan_serving, start_serving
        from s2o_platform.serving.settings import DEFAULT_CONFIG

        folder = self.out / "served"
        folder.mkdir(exist_ok=True)
        plan = plan_serving(DEFAULT_CONFIG, model=model, host="127.0.0.1", port=free_port())
        if self.preset.use_gpu:  # serve/config.yaml's replicas are CPU ones; the GPU preset serves on the GPU
            translator = plan.deployment_options.setdefault("SarTranslator", {})
            translator.setdefault("ray_actor_options", {})["num_gpus"] = 1
        url = start_serving(plan)
        self.log(f"[demo] Ray Serve is up at {url}; sending real HTTP requests")
        answers = []
        try:
            requests_to_send = [("scene-crop.tif", _geotiff_crop(scenes), "image/tiff", "tiff")]
            if real is not None:
                first = sorted((real / "sar").glob("*.png"))[0]
                requests_to_send.append((first.name, first.read_bytes(), "image/png", "png"))
            for name, body, content_type, fmt in requests_to_send:
                began = time.perf_counter()
                response = requests.post(
                    f"{url}/v1/translate?steps=4&format={fmt}",
                    data=body,
                    headers={"Content-Type": content_type},
                    timeout=120,
                )
                if response.status_code != 200:
                    raise DemoError(f"POST {name}: HTTP {response.status_code}: {response.text[:300]}")
                target = folder / f"{Path(name).stem}-optical.{fmt}"
                target.write_bytes(response.content)
                answers.append(
                    {
                        "request": name,
                        "status": response.status_code,
                        "output": str(target),
                        "ms": round(1000 * (time.perf_counter() - began), 1),
                        "tiles": response.headers.get("x-s2o-tiles"),
                    }
                )
        finally:
            serve.shutdown()
            self.log("[demo] Ray Serve shut down")
        return {"url": url, "answers": answers}

    # -- the whole run --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from s2o_platform.ray_cluster import connect

        p = self.preset
        self.log(f"[demo] preset {p.name} into {self.out}; {connect(None)}")
        store = self.stage("store", "1/9 synthetic tile store and georeferenced scenes", self.make_store)
        real = real_sample_dir()
        real_store = (
            self.stage(
                "real-store",
                "1b/9 the real SEN1-2 sample into a second store",
                lambda: self.make_real_store(real),
            )
            if real
            else None
        )
        if real is None:
            self.log("[demo] no real sample beside the repository (../shared/data/real): synthetic data only")
        data = store["store"]
        runs = self.out / "runs"
        teacher = self.stage(
            "teacher",
            "2/9 diffusion teacher (Ray Train + DeepSpeed)",
            lambda: self.train("teacher", "teacher.yaml", data, str(runs / "teacher"), p.teacher_steps, []),
        )
        acd = self.stage(
            "distill",
            "3/9 adversarial consistency distillation",
            lambda: self.train(
                "distill",
                "distill.yaml",
                data,
                str(runs / "acd"),
                p.distill_steps,
                [],
                extra={"teacher": teacher["bundle"]},
            ),
        )
        ablation = self.stage(
            "ablation",
            "4/9 consistency distillation without the discriminator (ablation)",
            lambda: self.train(
                "distill",
                "distill.yaml",
                data,
                str(runs / "ablation"),
                p.distill_steps,
                ["distill.adversarial=false"],
                extra={"teacher": teacher["bundle"]},
            ),
        )
        gan = self.stage(
            "gan",
            "5/9 pix2pix baseline",
            lambda: self.train("gan", "gan.yaml", data, str(runs / "gan"), p.gan_steps, []),
        )
        steps = ",".join(str(s) for s in p.student_steps)
        models = [
            f"teacher={teacher['bundle']}@ddim:50",
            f"acd={acd['bundle']}@lcm:{steps}",
            f"ablation={ablation['bundle']}@lcm:{p.student_steps[-1]}",
            f"pix2pix={gan['bundle']}",
        ]
        report = self.stage(
            "evaluate",
            "6/9 evaluation: quality and speed side by side",
            lambda: self.evaluate(
                data, str(self.out / "report"), models, p.eval_limit, references=p.speed_references
            ),
        )
        real_report = None
        if real_store is not None:
            real_report = self.stage(
                "evaluate-real",
                "6b/9 the student and pix2pix on the real SEN1-2 tiles",
                lambda: self.evaluate(
                    real_store["store"],
                    str(self.out / "report-real"),
                    [f"acd={acd['bundle']}@lcm:4", f"pix2pix={gan['bundle']}"],
                    64,
                    references=False,
                ),
            )
        translated = self.stage(
            "translate",
            "7/9 archive translation into COGs",
            lambda: self.translate(store["scenes"], acd["bundle"]),
        )
        served = self.stage(
            "serve",
            "8/9 online serving: Ray Serve, real HTTP requests",
            lambda: self.serve(acd["bundle"], store["scenes"], real),
        )
        summary = {
            "preset": p.model_dump(mode="json"),
            "out": str(self.out),
            "store": store,
            "real_store": real_store,
            "teacher": teacher,
            "student": acd,
            "ablation": ablation,
            "pix2pix": gan,
            "report": report,
            "real_report": real_report,
            "translate": translated,
            "serve": served,
            "seconds": round(time.perf_counter() - self.started, 1),
        }
        summary["stage_seconds"] = {
            k: v["seconds"]
            for k, v in summary.items()
            if isinstance(v, dict) and "seconds" in v and k != "preset"
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        text = summary_text(summary)
        (self.out / "summary.md").write_text(text + "\n")
        self.log("[demo] 9/9 summary")
        return summary


def scene_quality(translated: str, truth: str) -> dict[str, float]:
    """PSNR of a translated scene against its optical ground truth, and of the truth's own mean colour
    (what a model that ignores the SAR would score on this scene), both on [0, 1] images."""
    import numpy as np
    import rasterio

    from s2o_platform.data.synth import psnr

    with rasterio.open(translated) as a, rasterio.open(truth) as b:
        valid = (b.dataset_mask() > 0) & (a.dataset_mask() > 0)  # the scene's nodata corner is left out
        prediction = a.read().astype(np.float64)[:, valid].T / 255.0
        target = b.read().astype(np.float64)[:, valid].T / 255.0
    mean_colour = np.broadcast_to(target.mean(axis=0), target.shape)
    return {
        "scene_psnr": round(psnr(prediction, target), 2),
        "scene_mean_colour_psnr": round(psnr(mean_colour, target), 2),
    }


def verdicts(s: dict[str, Any]) -> list[str]:
    """Plain-words comparison of every model with the two baselines, and of the students with the teacher."""
    base = s["store"]["baselines"]
    floor, ceiling = base["mean_colour"], base["class_oracle"]
    lines = []
    for row in s["report"]["rows"]:
        if row.get("psnr") is None:
            continue
        above = row["psnr"] - floor
        where = (
            f"{above:.1f} dB above the mean-colour baseline"
            if above > 0.5
            else "no better than predicting the mean colour"
            if above > -0.5
            else f"{-above:.1f} dB below the mean-colour baseline"
        )
        line = f"- {row['label']}: {row['psnr']:.2f} dB, {where}, {ceiling - row['psnr']:.1f} dB below the class oracle"
        paired = row.get("paired")
        if paired and paired["reference"] != row["label"]:
            lo, hi = paired["ci95"]
            verdict = "better than" if lo > 0 else "worse than" if hi < 0 else "not distinguishable from"
            line += (
                f"; {verdict} {paired['reference']} ({paired['delta_psnr']:+.2f} dB per tile, "
                f"95% interval {lo:+.2f} to {hi:+.2f})"
            )
        if row.get("landcover_accuracy") is not None:
            line += f"; land cover read back from it: {row['landcover_accuracy']:.0%} of pixels"
        lines.append(line + ".")
    translated = s.get("translate") or {}
    if translated.get("scene_psnr") is not None:
        gain = translated["scene_psnr"] - translated["scene_mean_colour_psnr"]
        lines.append(
            f"- the translated scene: {translated['scene_psnr']:.2f} dB against its optical ground truth, "
            f"{gain:+.1f} dB over that scene's own mean colour ({translated['scene_mean_colour_psnr']:.2f} dB)."
        )
    return lines


def summary_text(s: dict[str, Any]) -> str:
    lines = [
        f"# s2o demo ({s['preset']['name']} preset): {s['seconds'] / 60:.1f} min in this run",
        "",
        "## Headline figures (test tiles of the synthetic store)",
        "",
        "| model | PSNR dB | SSIM | latency ms | speed-up vs DDIM-50 | vs DDPM-1000 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in s["report"]["rows"]:
        lines.append(
            f"| {row['label']} | {_fmt(row['psnr'], '.2f')} | {_fmt(row['ssim'], '.3f')} | {_fmt(row['latency_ms'], '.1f')} | "
            f"{_fmt(row['speedup_vs_ddim'], '.3g', 'x')} | {_fmt(row['speedup_vs_ddpm'], '.4g', 'x')} |"
        )
    baselines = s["store"]["baselines"]
    lines += [
        "",
        f"Baselines: predicting the dataset's mean colour everywhere scores {baselines['mean_colour']:.2f} dB; "
        f"an oracle that knows the true land-cover class of every pixel and paints its mean colour scores "
        f"{baselines['class_oracle']:.2f} dB (texture is not predictable from the SAR, so a model that samples "
        "realistic texture lands about 3 dB under the oracle).",
        "",
        "## How the models compare",
        "",
    ]
    lines += verdicts(s)
    if s["report"].get("landcover_heldout_accuracy") is not None:
        lines += [
            "",
            f"(The land-cover classifier reads {s['report']['landcover_heldout_accuracy']:.0%} of pixels right "
            "on the real optical test tiles: that is the ceiling for the land-cover figures above.)",
        ]
    if s.get("real_report"):
        lines += [
            "",
            "Real SEN1-2 tiles (models trained on synthetic data only): "
            + "; ".join(f"{r['label']} {_fmt(r['psnr'], '.2f')} dB" for r in s["real_report"]["rows"]),
        ]
    lines += [
        "",
        "## Artefacts",
        "",
        f"- tile store: {s['store']['store']}"
        + (f"; real-sample store: {s['real_store']['store']}" if s.get("real_store") else ""),
        f"- teacher bundle: {s['teacher']['bundle']}",
        f"- student (adversarial) bundle: {s['student']['bundle']}",
        f"- ablation bundle: {s['ablation']['bundle']}",
        f"- pix2pix bundle: {s['pix2pix']['bundle']}",
        f"- evaluation report: {s['report']['report']} ({', '.join(Path(f).name for f in s['report']['files'])})",
    ]
    if s.get("real_report"):
        lines.append(f"- evaluation on the real sample: {s['real_report']['report']}")
    lines.append(
        f"- translated COGs: {', '.join(s['translate']['outputs'])} ({s['translate']['tiles']} tiles)"
    )
    if s["translate"].get("gallery"):
        lines.append(
            f"- their gallery (open it in a browser): {s['translate']['gallery']}; "
            f"STAC catalog: {s['translate']['catalog']}"
        )
    for answer in s["serve"]["answers"]:
        lines.append(
            f"- served: POST {answer['request']} -> HTTP {answer['status']} in {answer['ms']:.0f} ms -> {answer['output']}"
        )
    lines.append(f"- this summary: {s['out']}/summary.md and summary.json")
    lines += [
        "",
        "Seconds per stage (when it last ran): "
        + ", ".join(f"{k} {v:.0f}" for k, v in s["stage_seconds"].items()),
    ]
    return "\n".join(lines)


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _geotiff_crop(scenes: str, size: int = 96) -> bytes:
    """The top-left corner of the first synthetic SAR scene as GeoTIFF bytes (georeference kept)."""
    import rasterio
    from rasterio.windows import Window

    from s2o_platform.serving.codec import geotiff_bytes

    first = sorted(Path(scenes).rglob("*.tif"))[0]
    with rasterio.open(first) as ds:
        window = Window(0, 0, min(size, ds.width), min(size, ds.height))
        data = ds.read(1, window=window)[None]
        crs, transform, nodata = ds.crs, ds.window_transform(window), ds.nodata
    return geotiff_bytes(data, crs=crs, transform=transform, nodata=nodata)
