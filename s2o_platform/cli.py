"""The `s2o` command line. Commands parse options and call library functions; heavy imports
(Ray, torch, rasterio) happen inside the commands so that `s2o --help` is instant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from s2o_platform.data.normalization import SarScale
from s2o_platform.errors import S2OError


class S2OGroup(TyperGroup):
    """The root command group: an S2OError from any command (sub-commands run inside this invoke) is printed
    as `error: <message>`, no traceback, and exits with its class's exit_code. It lives here rather than in
    main() so that every way of running `app` gets it: the console script, the jobs/ scripts and typer's
    CliRunner in the tests, which calls `app` and bypasses main()."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except S2OError as err:
            fail(str(err), code=err.exit_code)


app = typer.Typer(
    cls=S2OGroup,
    help="s2o-platform: translate SAR (Sentinel-1) into optical-looking imagery with diffusion models on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="Build and inspect tile stores of paired SAR/optical tiles.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
train_app = typer.Typer(
    help="Train a stage on Ray Train + DeepSpeed. Re-running with the same --out resumes from the latest checkpoint.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")

AddressOption = Annotated[
    Optional[str],
    typer.Option(
        "--address",
        help="Ray cluster to run on ('auto': the one `ray start` runs on this machine; 'host:6379'; "
        "'ray://host:10001'). Default: $RAY_ADDRESS, else a local cluster of this command's own (even "
        "beside a running `ray start` cluster) with max(4, cores) logical CPUs (more than the cores, so "
        "training workers and the Ray Data tasks feeding them never starve each other).",
    ),
]
S3EndpointOption = Annotated[
    Optional[str],
    typer.Option(
        "--s3-endpoint",
        help="S3-compatible endpoint URL for s3:// paths (MinIO, Ceph...). Default: $S2O_S3_ENDPOINT or "
        "$AWS_ENDPOINT_URL, else AWS. Credentials come from the usual AWS environment variables or profile.",
    ),
]
ConfigOption = Annotated[
    Optional[Path],
    typer.Option(
        "--config",
        help="YAML file of this command's settings, the keys --set takes "
        "(e.g. configs/tiny/ingest.yaml for data ingest; outside a checkout, "
        "configs/<preset>/<stage>.yaml names the copy installed with the package). "
        "Precedence: defaults < file < --set < explicit options.",
    ),
]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set", help="Override a config key: --set dotted.key=value (repeatable; value parsed as YAML)."
    ),
]


def fail(message: str, code: int = 2) -> None:
    """A one-line error and exit `code`: for the command line's own checks of its arguments (an S2OError
    raised by the package needs no catching: S2OGroup prints it the same way)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _parse_clip(text: str) -> list[float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        fail(f"--clip-db expects LO,HI in dB (e.g. -25,0), got {text!r}")
    return [lo, hi]


@data_app.command("ingest")
def data_ingest(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Where the pairs are (local path or s3:// URI, several allowed): a SEN1-2 folder "
            "(ROIs1158_spring/s1_90/..._p33.png + s2_90/..._p33.png); a folder with sar/ and optical/ "
            "sub-folders of same-named files (PNG, JPEG, (Geo)TIFF; an optical entry may be a folder of "
            "B04/B03/B02 band files), optionally with labels/: a land-cover class map per pair (same name, "
            "one band of class numbers 0..254, 255 or nodata = unlabelled), stored with the tiles for "
            "`s2o eval`'s land-cover scores; an S1/S2 site folder (s1/<product>/VV.tif + s2*/<product>/B4.tif...); "
            "two CSV lists in a row (SAR paths, optical paths) or one CSV with sar,optical columns.",
            show_default=False,
        ),
    ],
    out: Annotated[
        str, typer.Option("--out", help="The tile store to create or add to (folder or s3://bucket/prefix).")
    ],
    tile_size: Annotated[
        Optional[int], typer.Option("--tile-size", help="Tile side in pixels. [default: 256]")
    ] = None,
    stride: Annotated[
        Optional[int], typer.Option("--stride", help="Window step in pixels. [default: tile size]")
    ] = None,
    sar_scale: Annotated[
        Optional[SarScale],
        typer.Option(
            "--sar-scale",
            help="How SAR values are expressed. auto (default) decides per file: uint8 -> 8-bit display-scaled; "
            "other integers -> DN; a dB/linear units tag wins; floats with negative values -> dB; "
            "non-negative floats with 99th percentile < 10 -> linear power; else dB.",
        ),
    ] = None,
    clip_db: Annotated[
        Optional[str], typer.Option("--clip-db", help="dB window LO,HI mapped onto [-1, 1]. [default: -25,0]")
    ] = None,
    test_fraction: Annotated[
        Optional[float], typer.Option("--test-fraction", help="Fraction of scenes for test. [default: 0.1]")
    ] = None,
    val_fraction: Annotated[
        Optional[float], typer.Option("--val-fraction", help="Fraction of scenes for val. [default: 0.1]")
    ] = None,
    seed: Annotated[
        Optional[int], typer.Option("--seed", help="Seed of the split by scene. [default: 0]")
    ] = None,
    sar_band: Annotated[
        Optional[str],
        typer.Option(
            "--sar-band", help="SAR polarisation by name or 1-based index. [default: VV, else band 1]"
        ),
    ] = None,
    max_nodata: Annotated[
        Optional[float],
        typer.Option(
            "--max-nodata",
            help="Largest share of invalid pixels (declared "
            "nodata, NaN, fill regions) a kept window may hold; they are "
            "masked in training losses and metrics. 0 keeps only fully "
            "valid windows. [default: 0.1]",
        ),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    address: AddressOption = None,
    s3_endpoint: S3EndpointOption = None,
    summary_json: Annotated[
        Optional[Path], typer.Option("--summary-json", help="Also write the summary as JSON here.")
    ] = None,
) -> None:
    """Tile paired SAR/optical sources into a Parquet tile store, on Ray Data.

    Splits are by scene (never by tile), deterministic for a seed. Bad items (corrupt files, size
    mismatches, NaN/nodata SAR, wrong band counts, missing partners, unreadable paths) are skipped
    with their reason in the summary; the rest goes on. Re-ingesting adds no duplicate tiles.
    Exits 1 when nothing valid was found.
    """
    from s2o_platform import storage
    from s2o_platform.config import IngestConfig

    cfg = _command_config(
        IngestConfig,
        config,
        set_,
        {
            "tile_size": tile_size,
            "stride": stride,
            "sar_scale": sar_scale.value if sar_scale else None,
            "clip_db": _parse_clip(clip_db) if clip_db else None,
            "split.test_fraction": test_fraction,
            "split.val_fraction": val_fraction,
            "split.seed": seed,
            "sar_band": sar_band,
            "max_nodata": max_nodata,
        },
    )

    from s2o_platform.data.ingest import format_summary, run_ingest
    from s2o_platform.ray_cluster import connect

    options = storage.StorageOptions.from_env(s3_endpoint)
    typer.echo(f"ingesting {len(sources)} source(s) into {out} on {connect(address)}", err=True)
    summary = run_ingest(
        sources,
        out,
        tile_size=cfg.tile_size,
        stride=cfg.stride,
        sar_scale=cfg.sar_scale,
        clip_db=cfg.clip_db,
        test_fraction=cfg.split.test_fraction,
        val_fraction=cfg.split.val_fraction,
        seed=cfg.split.seed,
        sar_band=cfg.sar_band,
        shard_mb=cfg.shard_mb,
        max_nodata=cfg.max_nodata,
        options=options,
    )
    typer.echo(format_summary(summary))
    if summary_json:
        summary_json.write_text(json.dumps(summary.to_dict(), indent=2))
    if summary.pairs_ingested == 0:
        reasons = "; ".join(sorted({s["reason"] for s in summary.skipped})[:5]) or "no pairs found"
        fail(f"nothing valid to ingest from {', '.join(sources)}: {reasons}", code=1)


@data_app.command("synth")
def data_synth(
    out: Annotated[
        str, typer.Option("--out", help="The tile store to write (folder or s3://bucket/prefix).")
    ],
    pairs: Annotated[
        Optional[int], typer.Option("--pairs", help="Number of tile pairs. [default: 2048]")
    ] = None,
    size: Annotated[
        Optional[int],
        typer.Option("--size", help="Tile side in pixels (32 matches the tiny presets). [default: 32]"),
    ] = None,
    scenes: Annotated[
        Optional[Path],
        typer.Option(
            "--scenes",
            help="Also write large georeferenced SAR/optical GeoTIFF scenes here (sar/ + optical/), for the archive tools.",
        ),
    ] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the whole set. [default: 0]")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    address: AddressOption = None,
    s3_endpoint: S3EndpointOption = None,
) -> None:
    """Write a procedural SEN12-like benchmark set: land-cover maps -> optical colour/texture and
    SAR backscatter with Gamma speckle. Prints the PSNR of two baselines (mean colour, class oracle)."""
    from s2o_platform import storage
    from s2o_platform.config import SynthConfig

    cfg = _command_config(SynthConfig, config, set_, {"pairs": pairs, "size": size, "split.seed": seed})
    from s2o_platform.data.synth_writer import run_synth
    from s2o_platform.ray_cluster import connect

    typer.echo(f"synthesising {cfg.pairs} pairs of {cfg.size} px into {out} on {connect(address)}", err=True)
    summary = run_synth(
        out,
        pairs=cfg.pairs,
        size=cfg.size,
        seed=cfg.split.seed,
        test_fraction=cfg.split.test_fraction,
        val_fraction=cfg.split.val_fraction,
        clip_db=cfg.clip_db,
        scenes_dir=str(scenes) if scenes else None,
        n_scene_files=cfg.scene_files,
        scene_size=cfg.scene_size,
        options=storage.StorageOptions.from_env(s3_endpoint),
    )
    typer.echo(f"scenes:        {summary.scenes}")
    typer.echo("tiles written: " + ", ".join(f"{k} {v}" for k, v in summary.tiles.items()))
    typer.echo(
        f"baseline PSNR: mean colour {summary.baselines['mean_colour']:.2f} dB, "
        f"class oracle {summary.baselines['class_oracle']:.2f} dB (images in [0, 1])"
    )
    for path in summary.scene_files:
        typer.echo(f"scene:         {path}")
    typer.echo(f"time:          {summary.seconds:.1f} s")


@data_app.command("info")
def data_info(
    store: Annotated[str, typer.Argument(help="Tile store (folder or s3:// URI).")],
    sample: Annotated[int, typer.Option("--sample", help="Rows read for the statistics.")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    s3_endpoint: S3EndpointOption = None,
) -> None:
    """Rows per split, tile size, normalisation, schema and a few statistics of a tile store."""
    from s2o_platform import storage
    from s2o_platform.data.info import format_info, store_info

    info = store_info(store, sample=sample, options=storage.StorageOptions.from_env(s3_endpoint))
    typer.echo(json.dumps(info, indent=2) if as_json else format_info(info))


DataOption = Annotated[
    str,
    typer.Option("--data", help="The tile store to train on (folder or s3:// URI); its train split is used."),
]
OutOption = Annotated[
    str,
    typer.Option(
        "--out",
        help="Run folder (or s3:// prefix): checkpoints, config and the final bundle at OUT/bundle. "
        "The same --out again resumes from its latest checkpoint.",
    ),
]
DtypeOption = Annotated[
    Optional[str],
    typer.Option(
        "--dtype",
        help="Network precision: auto (fp16 on a GPU; on a CPU bf16 where "
        "it has AVX512-BF16/AMX, measured 1.9x fp32's speed at equal PSNR, else fp32), "
        "fp32, fp16 or bf16. Default: auto.",
        show_default=False,
    ),
]
CompileOption = Annotated[
    Optional[str],
    typer.Option(
        "--compile",
        help="The forward pass: off (eager), auto (torch.compile where a "
        "C++ compiler / Triton works here, else eager), default (torch.compile with static "
        "shapes per batch size; CUDA graphs on a GPU) or max (autotuned; longer compiles). "
        "Compiling takes seconds to a minute per batch size on a CPU (see README). "
        "Default: off.",
        show_default=False,
    ),
]
RequiredConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        help="YAML preset, e.g. configs/tiny/teacher.yaml (CPU) or configs/paper/teacher.yaml (GPU); "
        "outside a checkout, configs/<preset>/<stage>.yaml names the copy installed with the package.",
    ),
]


def _train(
    stage: str,
    config: Path,
    set_: list[str] | None,
    data: str,
    out: str,
    address: str | None,
    s3_endpoint: str | None,
    extra: dict | None = None,
) -> None:
    from s2o_platform import storage
    from s2o_platform.config import load_config
    from s2o_platform.train.runtime import get_stage

    model = get_stage(stage).config_model
    cfg = load_config(model, config, list(set_ or []))
    from s2o_platform.ray_cluster import connect
    from s2o_platform.train.launcher import run_training

    tile_size = _tile_size(cfg, extra)  # for distillation: the teacher bundle, checked before Ray starts
    typer.echo(f"[{stage}] training on {connect(address)}; run folder {out}", err=True)
    result = run_training(
        stage,
        cfg,
        data,
        out,
        tile_size=tile_size,
        extra=extra,
        options=storage.StorageOptions.from_env(s3_endpoint),
        log=lambda m: typer.echo(m, err=True),
    )
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if isinstance(v, (int, float)))
    typer.echo(f"[{stage}] done at step {result.step} in {result.seconds:.0f} s: {metrics}")
    typer.echo(f"[{stage}] bundle: {result.bundle}")


def _tile_size(cfg, extra: dict | None) -> int | None:
    """The tile size a stage's model is built for: its config (None: the store's), or for distillation the teacher bundle."""
    if hasattr(cfg, "model") or hasattr(cfg, "generator"):
        return cfg.model_tile_size()
    from s2o_platform.bundle import check_bundle

    return check_bundle(extra["teacher"]).tile_size


def _command_config(model, config: Path | None, set_: list[str] | None, flags: dict):
    """A command's settings: `model`'s defaults < --config FILE < --set key=value < the explicit options in `flags`
    (dotted key -> value; None: not given). A problem (unknown key, wrong type) is a one-line error, exit code 2."""
    from s2o_platform.config import load_config

    return load_config(model, config, list(set_ or []), flags=flags, flags_source=_option_name)


def _option_name(key: str) -> str:
    """The command-line option of a config key (batch_size -> --batch-size, split.test_fraction -> --test-fraction;
    eval's models list -> --model)."""
    return "--model" if key == "models" else "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def translate_config(config: Path | None = None, set_: list[str] | None = None, **flags):
    """`s2o translate`'s TranslateConfig from --config, --set and its explicit options (keyword = config key)."""
    from s2o_platform.config import TranslateConfig

    return _command_config(TranslateConfig, config, set_, flags)


def eval_config(config: Path | None = None, set_: list[str] | None = None, **flags):
    """`s2o eval`'s EvalConfig from --config, --set and its explicit options (keyword = config key; models: the
    --model list, which replaces the file's)."""
    from s2o_platform.config import EvalConfig

    return _command_config(EvalConfig, config, set_, flags)


@train_app.command("teacher")
def train_teacher(
    config: RequiredConfigOption,
    data: DataOption,
    out: OutOption,
    set_: SetOption = None,
    address: AddressOption = None,
    s3_endpoint: S3EndpointOption = None,
) -> None:
    """Train the conditional DDPM teacher (diffusers UNet2DModel over concat(noisy optical, SAR)).

    Ray Train TorchTrainer workers run DeepSpeed (ZeRO 0-2; bf16/fp16 on GPU, fp32 on CPU) and
    stream tiles from the store with Ray Data. Checkpoints every checkpoint.every_steps; the final
    inference bundle is at OUT/bundle. Keys worth --set: train.max_steps, train.batch_size, train.lr,
    scaling.num_workers, scaling.use_gpu, checkpoint.every_steps, deepspeed.zero_stage.
    """
    _train("teacher", config, set_, data, out, address, s3_endpoint)


@train_app.command("distill")
def train_distill(
    config: RequiredConfigOption,
    teacher: Annotated[
        str,
        typer.Option(
            "--teacher", help="The teacher bundle (RUN/bundle of `s2o train teacher`), local or s3://."
        ),
    ],
    data: DataOption,
    out: OutOption,
    set_: SetOption = None,
    address: AddressOption = None,
    s3_endpoint: S3EndpointOption = None,
) -> None:
    """Distil a teacher into a 1-8-step student by adversarial consistency distillation.

    Student, EMA target (decay train.ema_decay, 0.95 in the paper) and frozen teacher start from the
    teacher bundle; DDIM solver grid of distill.num_ddim_steps points; pseudo-Huber loss
    (distill.huber_c); a discriminator built from the teacher's encoder (distill.real:
    ground_truth|target, distill.gan_loss: non_saturating|hinge|wgan, distill.lambda_adv).
    --set distill.adversarial=false trains the no-adversarial ablation. The student bundle (OUT/bundle)
    samples with LCM in 1..N steps (N: distill.max_sampling_steps, 8 by default; default distill.default_steps).
    """
    _train("distill", config, set_, data, out, address, s3_endpoint, extra={"teacher": teacher})


@train_app.command("gan")
def train_gan(
    config: RequiredConfigOption,
    data: DataOption,
    out: OutOption,
    set_: SetOption = None,
    address: AddressOption = None,
    s3_endpoint: S3EndpointOption = None,
) -> None:
    """Train the pix2pix baseline: U-Net generator + PatchGAN discriminator, L1 (gan.lambda_l1) + adversarial.

    One step at inference; its bundle (OUT/bundle) loads in eval, batch and serve like a student's.
    """
    _train("gan", config, set_, data, out, address, s3_endpoint)


@app.command("translate")
def translate(
    source: Annotated[
        str,
        typer.Argument(
            help="SAR scenes: a folder (recursive), a glob ('archive/**/*.tif'), a .txt file "
            "listing paths/URIs, an s3:// prefix, one GeoTIFF, or STAC JSON (an Item, an ItemCollection, a "
            "catalog.json or collection.json, local or s3://: one scene per item, see --asset)."
        ),
    ],
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            help="The bundle to translate with (a student's OUT/bundle; any "
            "stage works). Required, here or as model: in --config.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        str,
        typer.Option(
            "--out",
            help="Destination folder or s3:// prefix: DEST/<scene name>.tif COGs, "
            "DEST/_s2o_manifest.jsonl and the run's resolved settings, DEST/_s2o_config.yaml. "
            "Running again skips scenes already done.",
        ),
    ] = ...,
    steps: Annotated[
        Optional[int],
        typer.Option(
            "--steps",
            help="Sampling steps (student: 1..the bundle's max_steps, 8 for s2o train distill's default); default: the bundle's.",
        ),
    ] = None,
    overlap: Annotated[
        Optional[int],
        typer.Option(
            "--overlap",
            help="Overlap of neighbouring windows in px, blended smoothly (default: a quarter of the tile).",
        ),
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option("--batch-size", help="Tiles per forward pass. Default: 32.", show_default=False),
    ] = None,
    actors: Annotated[
        Optional[int],
        typer.Option(
            "--actors",
            help="Model actors (each takes a GPU where the cluster has them). Default: 1.",
            show_default=False,
        ),
    ] = None,
    band: Annotated[
        Optional[str],
        typer.Option(
            "--band",
            help="SAR band by name (VV, VH) or 1-based index. Default: "
            "the band described VV, else the first.",
        ),
    ] = None,
    target_crs: Annotated[
        Optional[str],
        typer.Option(
            "--target-crs",
            help="For scenes referenced by ground control points instead of a CRS (Sentinel-1 GRD measurement "
            "TIFFs): the CRS of the regular grid they are warped onto (bilinear, window by window), e.g. EPSG:32633. "
            "Default: the UTM zone of the scene centre.",
            show_default=False,
        ),
    ] = None,
    target_resolution: Annotated[
        Optional[float],
        typer.Option(
            "--target-resolution",
            help="For GCP-referenced scenes: the grid's pixel size in the target CRS's units (metres for UTM). "
            "Default: the source's ground spacing.",
            show_default=False,
        ),
    ] = None,
    asset: Annotated[
        Optional[str],
        typer.Option(
            "--asset",
            help="For a STAC SOURCE (Item, ItemCollection, catalog.json or collection.json): the key of each "
            "item's SAR asset. Default: the asset whose sar:polarizations or key says VV, else the only data asset.",
            show_default=False,
        ),
    ] = None,
    sar_scale: Annotated[
        Optional[SarScale],
        typer.Option(
            "--sar-scale",
            help="How SAR values are expressed. auto (default) decides per "
            "scene: uint8 -> display-scaled image; other integers -> DN; float metadata "
            "saying dB/linear wins; floats with negatives -> dB; non-negative floats "
            "with 99th percentile < 10 -> linear power; else dB.",
            show_default=False,
        ),
    ] = None,
    output_dtype: Annotated[
        Optional[str],
        typer.Option(
            "--output-dtype",
            help="uint8 RGB (nodata 0) or float32 in [0, 1] (nodata NaN). Default: uint8.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        Optional[int],
        typer.Option(
            "--seed",
            help="Noise seed (each batch seeded from it and its first tile). Default: 0.",
            show_default=False,
        ),
    ] = None,
    dtype: DtypeOption = None,
    compile_: CompileOption = None,
    uncertainty: Annotated[
        Optional[int],
        typer.Option(
            "--uncertainty",
            help="K >= 2: draw K samples per tile (independent noise, seeded per tile and sample) and write a "
            "fourth COG band, the per-pixel standard deviation over them (mean of RGB, in the RGB bands' units: "
            "8-bit levels 1..255 for uint8 output, [0, 1] for float32; 0 / NaN nodata), blended across overlaps "
            "like the image. Costs K forward passes per tile. Student or teacher bundles (pix2pix has no noise). "
            "Default: 0 (no band).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Optional[str],
        typer.Option(
            "--output",
            help="With --uncertainty: the RGB bands hold the samples' mean (mean) or the first sample (sample: "
            "the pixels a run without --uncertainty writes). Default: mean.",
            show_default=False,
        ),
    ] = None,
    address: AddressOption = None,
    s3_endpoint: S3EndpointOption = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")
    ] = True,
    split: Annotated[
        Optional[str],
        typer.Option(
            "--split",
            help="For a tile store SOURCE: the split to translate into Parquet. Default: test.",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Translate an archive of SAR GeoTIFF scenes into georeferenced optical Cloud-Optimised GeoTIFFs.

    When SOURCE is a tile store, its --split is translated into Parquet files of predicted tiles
    under DEST instead (tile_id, predicted and ground-truth optical tiles).

    Ray Data reads each scene window row by window row, the model runs in an actor pool, and each
    scene is blended (overlaps cross-fade: no seams) and written as a COG with the source CRS,
    transform and nodata. Memory per scene is two window rows across its width, whatever its height.
    A scene that cannot be read is recorded in the manifest with its reason; the others go on; the
    exit code is 1 when any failed. Scenes referenced by ground control points (Sentinel-1 GRD) are warped
    onto a regular grid (--target-crs, --target-resolution).

    DEST also gets, rebuilt every run: a PNG quicklook of each output and of its SAR (and of its
    uncertainty band), catalog.json (a STAC catalog with one item per scene, links relative) and
    index.html (a gallery that opens from disk). SOURCE may itself be STAC (an Item, an ItemCollection,
    catalog.json or collection.json; --asset picks each item's SAR asset).

    Settings also come from --config FILE and --set key=value, with the options' names as keys
    (model, steps, overlap, batch_size, actors, band, asset, target_crs, target_resolution, sar_scale, output_dtype, seed, dtype, compile,
    uncertainty, output, split; and device: auto|cpu|cuda); an explicit option wins over both. SOURCE, --out, --address,
    --s3-endpoint and --progress are the command line's only. DEST/_s2o_config.yaml keeps the
    resolved settings of the latest run.
    """
    from s2o_platform import storage
    from s2o_platform.translate.pipeline import TranslateRun, run_translate, run_translate_store

    cfg = translate_config(
        config,
        set_,
        model=model,
        steps=steps,
        overlap=overlap,
        batch_size=batch_size,
        actors=actors,
        band=band,
        asset=asset,
        target_crs=target_crs,
        target_resolution=target_resolution,
        sar_scale=sar_scale.value if sar_scale else None,
        output_dtype=output_dtype,
        seed=seed,
        dtype=dtype,
        compile=compile_,
        uncertainty=uncertainty,
        output=output,
        split=split,
    )
    options = TranslateRun.from_config(
        cfg,
        source,
        out,
        address=address,
        progress=progress,
        storage_options=storage.StorageOptions.from_env(s3_endpoint),
    )
    from s2o_platform.data.store import METADATA_FILE

    fs, root = storage.resolve(source, options.storage)
    is_store = storage.exists(fs, storage.join(root, METADATA_FILE))
    if is_store:
        summary = run_translate_store(options, cfg.split, log=lambda m: typer.echo(m, err=True))
    else:
        summary = run_translate(options, log=lambda m: typer.echo(m, err=True))
    typer.echo(summary.text())
    if summary.failed:
        raise typer.Exit(1)


@app.command("eval")
def evaluate(
    data: Annotated[str, typer.Option("--data", help="The tile store (folder or s3:// URI) to evaluate on.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Report folder: report.json, report.md, tradeoff.png, samples.png and "
            "the run's resolved settings, config.yaml.",
        ),
    ],
    model: Annotated[
        Optional[list[str]],
        typer.Option(
            "--model",
            help="NAME=BUNDLE[@SAMPLER[:STEPS[,STEPS...]]], repeatable; one report row per step count. Samplers: "
            "ddpm (teacher, all training steps), ddim:N (teacher), lcm:1..the bundle's max_steps (student; 8 for s2o train "
            "distill's default), none for pix2pix. "
            "Without @SAMPLER the bundle's default. E.g. --model acd=runs/s/bundle@lcm:1,2,4,8. At least one, here "
            "or in the models: list of --config (--model replaces that list).",
            show_default=False,
        ),
    ] = None,
    split: Annotated[
        Optional[str],
        typer.Option("--split", help="Store split to evaluate on. Default: test.", show_default=False),
    ] = None,
    limit: Annotated[
        Optional[int], typer.Option("--limit", help="Evaluate the first N tiles (by tile id) of the split.")
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--batch-size",
            help="Tiles per forward pass; throughput is measured at this size. Default: 32.",
            show_default=False,
        ),
    ] = None,
    fid_weights: Annotated[
        Optional[Path],
        typer.Option(
            "--fid-weights",
            help="Inception-v3 FID network: TorchScript (e.g. inception-2015-12-05.pt) or a "
            "torch-fidelity weights file. Nothing is downloaded; without it FID is reported as skipped.",
        ),
    ] = None,
    device: Annotated[
        Optional[str],
        typer.Option(
            "--device", help="auto (CUDA when present), cpu or cuda. Default: auto.", show_default=False
        ),
    ] = None,
    dtype: DtypeOption = None,
    compile_: CompileOption = None,
    seed: Annotated[
        Optional[int],
        typer.Option(
            "--seed",
            help="Noise seed: batch i uses seed + i, the same for every model. Default: 0.",
            show_default=False,
        ),
    ] = None,
    uncertainty: Annotated[
        Optional[int],
        typer.Option(
            "--uncertainty",
            help="K >= 2: sample every tile K times (independent noise keyed by tile id) and report how well the "
            "per-pixel spread predicts the error of the first sample, the one scored: Spearman's rho (the table's "
            "'unc rho'), a calibration table (report.json) and a reliability plot (uncertainty.png). Student and "
            "teacher settings; pix2pix is deterministic and noted. Costs K forward passes per tile. Default: 0.",
            show_default=False,
        ),
    ] = None,
    repeats: Annotated[
        Optional[int],
        typer.Option(
            "--repeats",
            help="Timed calls per latency measurement (median; after one warm-up). Default: 3.",
            show_default=False,
        ),
    ] = None,
    ddpm_limit: Annotated[
        Optional[int],
        typer.Option(
            "--ddpm-limit",
            help="Tiles scored with ancestral DDPM (1000 steps per tile). Default: 32.",
            show_default=False,
        ),
    ] = None,
    address: Annotated[
        Optional[str],
        typer.Option(
            "--address",
            help="Score on a Ray cluster ('auto', 'host:6379', or 'local' for a local one): Ray Data "
            "streams the split through --workers actors per model (1 GPU each where the cluster has GPUs). "
            "Speed is always timed in this process. Default: everything in this process.",
        ),
    ] = None,
    workers: Annotated[
        Optional[int],
        typer.Option(
            "--workers",
            help="Ray Data actors per model setting (with --address). Default: 1.",
            show_default=False,
        ),
    ] = None,
    speed_references: Annotated[
        Optional[bool],
        typer.Option(
            "--speed-references/--no-speed-references",
            help="Time teacher DDPM (all steps) and DDIM-50 for the speed-ups when a teacher is given but "
            "those settings are not listed. Default: --speed-references.",
            show_default=False,
        ),
    ] = None,
    s3_endpoint: S3EndpointOption = None,
    mlflow_run_id: Annotated[
        Optional[str],
        typer.Option(
            "--mlflow-run-id",
            help="Also log the report to this MLflow run (e.g. the training run of the "
            "model, in RUN/mlflow_run.json): metrics per setting and the report files, on the server in "
            "$MLFLOW_TRACKING_URI. An unreachable server is a warning, not a failed evaluation.",
        ),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Quality and speed of several models on the same test tiles and seeds, in one run.

    Quality: PSNR and SSIM (images in [0, 1]), mean per-channel colour error (0-255), FID with
    --fid-weights. Speed: latency per image at batch 1 after warm-up (synchronised on GPU), throughput
    at --batch-size, and the speed-up of every setting against the teacher with DDPM (all steps) and
    DDIM-50, timed in the same run even when not listed (quality of those is only measured when listed).

    Settings also come from --config FILE and --set key=value, with the options' names as keys (models,
    the --model list; split, limit, batch_size, fid_weights, device, dtype, compile, seed, uncertainty, repeats,
    ddpm_limit, workers, speed_references; and sample_tiles, landcover_fit_tiles); an explicit option
    wins over both. --data, --out, --address, --s3-endpoint and --mlflow-run-id are the command line's
    only. REPORT_DIR/config.yaml keeps the resolved settings.
    """
    from s2o_platform import storage
    from s2o_platform.evaluation.report import console_table
    from s2o_platform.evaluation.runner import EvalRun
    from s2o_platform.evaluation.runner import evaluate as run

    cfg = eval_config(
        config,
        set_,
        models=model or None,
        split=split,
        limit=limit,
        batch_size=batch_size,
        fid_weights=str(fid_weights) if fid_weights else None,
        device=device,
        dtype=dtype,
        compile=compile_,
        seed=seed,
        uncertainty=uncertainty,
        repeats=repeats,
        ddpm_limit=ddpm_limit,
        workers=workers,
        speed_references=speed_references,
    )
    options = EvalRun.from_config(
        cfg,
        data,
        str(out),
        address=address,
        mlflow_run_id=mlflow_run_id,
        storage_options=storage.StorageOptions.from_env(s3_endpoint),
    )
    report, written = run(options, log=lambda m: typer.echo(m, err=True))
    typer.echo(console_table(report))
    typer.echo("report: " + ", ".join(str(p) for p in written))
    if any(r.error for r in report.rows):
        raise typer.Exit(1)


def serve_plan(
    config: Path | None = None,
    *,
    model: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    set_: list[str] | None = None,
    dtype: str | None = None,
    compile_: str | None = None,
):
    """`s2o serve`'s plan (and the Serve config it read): the config's application args < --set < --model, --dtype,
    --compile. Everything is checked before Ray starts; a problem is a one-line error, exit code 2."""
    from s2o_platform.serving.runner import plan_serving
    from s2o_platform.serving.settings import DEFAULT_CONFIG

    if config is None:  # a --config given always wins; without one, a checkout's copy, else the packaged one
        config = Path("serve/config.yaml") if Path("serve/config.yaml").is_file() else DEFAULT_CONFIG
    explicit = {k: v for k, v in {"dtype": dtype, "compile": compile_}.items() if v}
    return plan_serving(
        config, model=model, host=host, port=port, overrides=explicit or None, sets=list(set_ or [])
    ), config


@app.command("serve")
def serve_command(
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            help="The bundle to serve (a student's OUT/bundle). Default: args.model of the Serve config.",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Interface the HTTP proxy listens on (0.0.0.0 for all).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="HTTP port.")] = 8000,
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config",
            help="Serve config: batching, limits, replicas, autoscaling, "
            "queue limits (the file `serve deploy` takes). Default: "
            "serve/config.yaml in the current directory where there is one (a "
            "checkout), else the copy installed with the package "
            "(s2o_platform/serving/config.yaml).",
            show_default=False,
        ),
    ] = None,
    dtype: Annotated[
        Optional[str],
        typer.Option(
            "--dtype",
            help="Network precision of the replicas: auto, fp32, fp16 or "
            "bf16. Default: args.dtype of the Serve config (auto).",
        ),
    ] = None,
    compile_: Annotated[
        Optional[str],
        typer.Option(
            "--compile",
            help="The replicas' forward pass: off, auto, default or max "
            "(see s2o translate --help). Default: args.compile of the Serve config.",
        ),
    ] = None,
    address: AddressOption = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set",
            help="Override one of the application's args (the `args:` "
            "of the Serve config, e.g. --set max_request_model_s=30 --set "
            "max_image_side=2048): --set key=value, repeatable, value parsed as YAML. "
            "Precedence: the config's args < --set < --model, --dtype, --compile.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve a model over HTTP with Ray Serve until interrupted (Ctrl-C or SIGTERM).

    POST /v1/translate?steps=N&format=png|tiff with a SAR image as the body (image/png, image/jpeg
    or image/tiff; a GeoTIFF keeps its georeference in a tiff answer); GET /healthz; GET /v1/model;
    OpenAPI docs at /docs. Requests are batched dynamically across clients; beyond the config's queue
    limits, requests get 503 with Retry-After instead of waiting without bound.

    Ctrl-C and SIGTERM both stop Serve and, where the command started its own local Ray cluster (no
    --address), every process of that cluster; with --address the cluster itself stays up. The local
    cluster's Ray ports listen on 127.0.0.1 only (S2O_RAY_BIND=0.0.0.0 opens them, see README);
    --host concerns the HTTP endpoint alone.

    Example: curl -X POST --data-binary @sar.png -H 'Content-Type: image/png'
             'http://127.0.0.1:8000/v1/translate?steps=4' -o optical.png
    """
    import signal
    import time

    from s2o_platform.ray_cluster import connect
    from s2o_platform.serving.runner import start_serving

    plan, config = serve_plan(
        config, model=model, host=host, port=port, set_=set_, dtype=dtype, compile_=compile_
    )

    def stop_on_sigterm(signum, frame) -> None:
        # SIGTERM (kill, systemd, docker stop, Kubernetes) takes Ctrl-C's path through the finally below.
        # Ray's own SIGTERM handler (set by ray.init) kills the processes the driver started and exits
        # with the cluster half gone: the dashboard and runtime-env agents (the raylet's) outlived it.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the shutdown
        raise KeyboardInterrupt

    typer.echo(f"[serve] starting Ray Serve with {plan.settings.model} (config {config}) ...", err=True)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    from ray import serve

    try:
        connect(address)
        signal.signal(signal.SIGTERM, stop_on_sigterm)  # again: ray.init installed its own
        url = start_serving(plan, address)
        typer.echo(
            f"[serve] ready: POST {url}/v1/translate  |  GET {url}/healthz  |  docs {url}/docs  (Ctrl-C stops)"
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("[serve] shutting down", err=True)
    finally:
        import ray

        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            # A local cluster of this command's own: every process of it ends here (GCS, raylet, dashboard,
            # agents, workers). A cluster joined with --address: this only disconnects.
            ray.shutdown()


def demo_preset(preset: str | None = None, config: Path | None = None, set_: list[str] | None = None):
    """`s2o demo`'s settings: --preset (else the automatic choice) < --config FILE < --set key=value; an unknown
    key or a bad value is a one-line error, exit code 2 (an unknown preset, as before: exit code 1)."""
    from s2o_platform.demo import resolve_preset

    return resolve_preset(preset, config, list(set_ or []))


@app.command("demo")
def demo_command(
    out: Annotated[
        Path, typer.Option("--out", help="Where every artefact goes; a re-run reuses the stages done there.")
    ] = Path("runs/demo"),
    force: Annotated[
        bool, typer.Option("--force", help="Start over: remove --out first and redo every stage.")
    ] = False,
    preset: Annotated[
        Optional[str],
        typer.Option(
            "--preset",
            help="tiny (CPU, about a quarter of an hour on 2 cores), "
            "gpu-small (one GPU, longer training) or smoke (every stage, minimal "
            "work: checks the wiring). Default: gpu-small where a GPU is visible, "
            "else tiny.",
        ),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """The whole platform end to end on one machine, with no data of yours and no cloud.

    A synthetic tile store (plus the real SEN1-2 sample beside the repository, where present) ->
    diffusion teacher -> adversarial consistency distillation and its no-adversarial ablation ->
    pix2pix baseline -> evaluation report (table, trade-off plot, sample grid) -> archive translation
    of synthetic georeferenced scenes into COGs -> Ray Serve up, real HTTP requests translated, Serve
    shut down -> a summary of every artefact and the headline figures (OUT/summary.md).
    Each stage's result is kept in OUT/stages/; running again resumes after the last finished stage.

    --config FILE and --set key=value change the chosen preset's keys (precedence: preset < file < --set):
    pairs, scene_size, batch_size, teacher_steps, distill_steps, gan_steps, eval_limit, student_steps,
    speed_references, use_gpu; e.g. --set teacher_steps=200 --set student_steps=[1,2,4]. The resolved
    settings are saved as OUT/config.yaml.
    """
    from s2o_platform.demo import Demo, summary_text

    chosen = demo_preset(preset, config, set_)
    summary = Demo(out, chosen, force=force, log=lambda m: typer.echo(m, err=True)).run()
    typer.echo(summary_text(summary))


def main() -> None:
    """The `s2o` script: the Typer app. Its S2OGroup prints any S2OError (a Ray start-up problem included) as
    one line, not a traceback, and exits with the error's exit_code."""
    app()


if __name__ == "__main__":
    main()
