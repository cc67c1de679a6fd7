"""`s2o translate`: SAR scenes -> optical COGs on Ray Data.

    strips (scene, row)  --map_batches: StripTranslator (actor pool, one model each):
                             read the window row with rasterio, normalise, translate-->  optical tiles
    driver: per-scene StripMosaic (rows in order) -> tiled GeoTIFF -> COG -> DEST, manifest line

Order is preserved end to end so each scene's mosaic receives its tiles row by row and holds at most
two window rows (memory bounded by scene width, not area). A scene that cannot be read is recorded as
failed with its reason; the others go on. Scenes already done (manifest + output present) are skipped.
One run at a time writes into a DEST (its lock), and a run first removes what a killed one left in its work
folder (translate/manifest.py).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from s2o_platform import storage
from s2o_platform.bundle import check_bundle
from s2o_platform.config import TranslateConfig, dump_config
from s2o_platform.data.normalization import SarScale
from s2o_platform.data.rasters import InputError
from s2o_platform.data.scene import SceneInfo, SceneReader, inspect_scene
from s2o_platform.devices import DTYPES, cluster_cpu_hosts, cluster_gpus, cpu_threads, inference_actors
from s2o_platform.errors import S2OError
from s2o_platform.geo.blending import OPTICAL_TILE_DTYPE, OUTPUT_DTYPES
from s2o_platform.inference import LoadedModel, resolve_sampler_for, tile_key
from s2o_platform.inference_compile import CompileError, check_compile_here
from s2o_platform.tile_sampling import UNCERTAINTY_OUTPUTS
from s2o_platform.translate.manifest import (
    DATETIME_FROM_FILE,
    DATETIME_FROM_ITEM,
    DATETIME_NONE,
    DestLock,
    DestLockedError,
    Manifest,
    SceneRecord,
    remove_leftovers,
    work_folder,
)
from s2o_platform.translate.publish import model_identity, publish
from s2o_platform.translate.sources import Scene, discover_scenes, output_file
from s2o_platform.translate.writer import SceneWriter


class TranslateError(S2OError, ValueError):
    """Arguments that make the whole run impossible (raised before any scene is read)."""


@dataclass
class TranslateRun:
    """One run of `s2o translate`: what to translate and where (source, dest, the cluster, storage) and how
    (the fields of its TranslateConfig); `storage` is where object storage lives (StorageOptions)."""

    source: str
    model: str
    dest: str
    steps: int | None = None
    overlap: int | None = None  # default: a quarter of the tile
    batch_size: int = 32
    actors: int = 1
    band: str | None = None
    asset: str | None = None  # a STAC SOURCE's SAR asset key (default: translate/stac.choose_asset)
    target_crs: str | None = (
        None  # GCP-referenced scenes: the grid's CRS (default: the scene centre's UTM zone)
    )
    target_resolution: float | None = (
        None  # ... and its pixel size in map units (default: the source's spacing)
    )
    sar_scale: str = "auto"
    output_dtype: str = "uint8"
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # auto | fp32 | fp16 | bf16 (devices.resolve_dtype)
    compile: str = "off"  # off | auto | default | max (inference_compile.resolve_compile)
    uncertainty: int = 0  # samples per tile for an uncertainty band (0: none; else >= 2)
    output: str = "mean"  # with uncertainty: the samples' mean, or the first sample
    address: str | None = None
    progress: bool = True
    storage: storage.StorageOptions = field(default_factory=storage.StorageOptions)

    @classmethod
    def from_config(
        cls,
        config: TranslateConfig,
        source: str,
        dest: str,
        *,
        address: str | None = None,
        progress: bool = True,
        storage_options: storage.StorageOptions | None = None,
    ) -> TranslateRun:
        """The run's options from a resolved `s2o translate` config (config.model must be set)."""
        if not config.model:
            raise TranslateError("no model bundle: pass --model BUNDLE (or set model: in --config)")
        return cls(
            source=source,
            dest=dest,
            address=address,
            progress=progress,
            storage=storage_options or storage.StorageOptions(),
            **config.model_dump(mode="json", exclude={"split"}),
        )

    def to_config(self, split: str = "test") -> TranslateConfig:
        """The settings of this run as the config `s2o translate --config` reads (what DEST/_s2o_config.yaml holds).
        A value the config would refuse but the run accepts (a library caller's) is kept as it is."""
        values = {name: getattr(self, name) for name in TranslateConfig.model_fields if name != "split"}
        try:
            return TranslateConfig(split=split, **values)
        except ValueError:
            return TranslateConfig.model_construct(split=split, **values)


#: The name before 2026-12 (kept so existing callers keep working).
TranslateOptions = TranslateRun


#: The resolved config of the latest run into DEST (yaml.safe_dump), next to its manifest.
CONFIG_FILE = "_s2o_config.yaml"


def save_config(options: TranslateRun, split: str = "test") -> str:
    """Write DEST/_s2o_config.yaml (local or s3://, through the storage layer); returns its path."""
    fs, root = storage.resolve(options.dest, options.storage)
    path = storage.join(root, CONFIG_FILE)
    storage.write_bytes_atomic(fs, path, dump_config(options.to_config(split)).encode())
    return path


@dataclass
class TranslateSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    tiles: int = 0
    seconds: float = 0.0
    stream_seconds: float = 0.0  # from the first translated tile to the last output written (steady state)
    warnings: list[str] = field(
        default_factory=list
    )  # quicklooks, catalog or gallery not written (outputs are)

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds else 0.0

    def text(self) -> str:
        lines = [
            f"[translate] {len(self.done)} scene(s) translated, {len(self.skipped)} skipped (already done), "
            f"{len(self.failed)} failed; {self.tiles} tiles in {self.seconds:.1f} s ({self.tiles_per_s:.1f} tiles/s)"
        ]
        lines += [f"[translate] failed: {scene}: {reason}" for scene, reason in self.failed]
        lines += [f"[translate] warning: {warning}" for warning in self.warnings]
        return "\n".join(lines)


def read_strip_tiles(
    batch: dict[str, np.ndarray], infos: list[SceneInfo], reader: SceneReader
) -> dict[str, np.ndarray]:
    """(scene, row) strips -> one row per tile; an unreadable strip -> one error row."""
    out: dict[str, list] = {"scene": [], "row": [], "col": [], "sar": [], "valid": [], "error": []}
    for scene, row in zip(batch["scene"], batch["row"]):
        info = infos[int(scene)]
        t = info.tile
        try:
            tiles, masks = reader.read_strip(info, int(row))
            cols = info.col_starts
        except Exception as err:  # noqa: BLE001 - recorded against the scene, the run goes on
            tiles, masks, cols = np.zeros((1, 1, t, t), np.float32), np.zeros((1, t, t), bool), [-1]
            message = f"{type(err).__name__}: {err}"
        else:
            message = ""
        for k, col in enumerate(cols):
            out["scene"].append(int(scene))
            out["row"].append(int(row))
            out["col"].append(int(col))
            out["sar"].append(tiles[k])
            out["valid"].append(masks[k])
            out["error"].append(message)
    return {k: np.stack(v) if k in ("sar", "valid") else np.asarray(v) for k, v in out.items()}


class StripTranslator(LoadedModel):
    """(scene, row) strips -> their tiles, read with rasterio and translated: one output block per call,
    so blocks stay one window row in size (the actor pool is fed strips, not whole scenes).
    Optical tiles are float16 (OPTICAL_TILE_DTYPE) in [-1, 1]; an unreadable strip passes through as an error row."""

    def __init__(
        self,
        infos: list[SceneInfo],
        driver_node: str | None = None,
        uncertainty: int = 0,
        uncertainty_output: str = "mean",
        **kwargs,
    ):
        if kwargs.get("device") == "cpu" and kwargs.get("threads") is None:
            import ray

            # On the driver's node one core is kept for the driver, which mosaics and writes every scene: with
            # the model's threads on all cores, both stall (measured on 2 cores: 1 thread translates faster
            # than 2; README "Archive translation"). Other nodes give the model all their cores.
            on_driver_node = ray.get_runtime_context().get_node_id() == driver_node
            kwargs["threads"] = cpu_threads(
                None, kwargs.get("cpu_share", 1), reserve=1 if on_driver_node else 0
            )
        super().__init__(**kwargs)
        self.infos = infos
        self.reader = SceneReader()
        self.uncertainty, self.uncertainty_output = uncertainty, uncertainty_output

    def __call__(self, strips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = read_strip_tiles(strips, self.infos, self.reader)
        ok = batch["error"] == ""
        n, t = len(ok), batch["sar"].shape[-1]
        optical = np.zeros((n, 3, t, t), OPTICAL_TILE_DTYPE)
        spread = np.zeros((n, t, t), OPTICAL_TILE_DTYPE) if self.uncertainty else None
        # One forward batch per strip, each tile's noise keyed by its scene's name and window: what a tile
        # becomes depends on nothing else (not the scene's position in this run, not its batch neighbours),
        # so a resumed run reproduces an uninterrupted one exactly.
        for scene, row in dict.fromkeys(zip(batch["scene"].tolist(), batch["row"].tolist())):
            index = np.flatnonzero(ok & (batch["scene"] == scene) & (batch["row"] == row))
            if len(index):
                name = self.infos[scene].name
                keys = [tile_key(name, row, col) for col in batch["col"][index].tolist()]
                if spread is None:
                    optical[index] = self.translate(batch["sar"][index], "", keys=keys).astype(
                        OPTICAL_TILE_DTYPE
                    )
                else:
                    optical[index], spread[index] = self.run_tiles_with_uncertainty(
                        batch["sar"][index],
                        self.seed,
                        self.uncertainty,
                        keys=keys,
                        output=self.uncertainty_output,
                    )
        del batch["sar"]
        return {**batch, "optical": optical, **({"uncertainty": spread} if spread is not None else {})}


def check_options(options: TranslateRun):
    metadata = check_bundle(options.model, options.storage)
    if metadata.sar_channels != 1:
        raise TranslateError(
            f"{options.model} takes {metadata.sar_channels} SAR channels; archive translation reads one band (--band)"
        )
    _, steps = resolve_sampler_for(metadata, options.model, None, options.steps)
    tile = metadata.tile_size
    overlap = tile // 4 if options.overlap is None else options.overlap
    if not 0 <= overlap < tile:
        raise TranslateError(
            f"--overlap must be in 0..{tile - 1} px for the model's {tile} px tiles, got {overlap}"
        )
    if options.uncertainty:
        if options.uncertainty < 2:
            raise TranslateError(
                f"--uncertainty takes at least 2 samples per tile, got {options.uncertainty}"
            )
        if metadata.sampler.name == "direct":
            raise TranslateError(
                f"{options.model} ({metadata.stage}) is deterministic (one forward pass, no noise), so it has no "
                "uncertainty: --uncertainty needs a student or teacher bundle"
            )
    if options.output not in UNCERTAINTY_OUTPUTS:
        raise TranslateError(f"--output must be one of {UNCERTAINTY_OUTPUTS}, got {options.output!r}")
    if options.output_dtype not in OUTPUT_DTYPES:
        raise TranslateError(f"--output-dtype must be one of {OUTPUT_DTYPES}")
    if options.sar_scale not in [s.value for s in SarScale]:
        raise TranslateError(f"--sar-scale must be one of {[s.value for s in SarScale]}")
    if options.batch_size < 1 or options.actors < 1:
        raise TranslateError("--batch-size and --actors must be >= 1")
    if options.target_crs is not None:
        from rasterio.crs import CRS
        from rasterio.errors import CRSError

        try:
            CRS.from_user_input(options.target_crs)
        except CRSError as err:
            raise TranslateError(
                f"--target-crs {options.target_crs!r} is not a CRS rasterio knows ({err}); give e.g. EPSG:32633"
            ) from None
    if options.target_resolution is not None and not options.target_resolution > 0:
        raise TranslateError(
            f"--target-resolution must be > 0 map units per pixel, got {options.target_resolution}"
        )
    if options.dtype not in ("auto", *DTYPES):
        raise TranslateError(f"--dtype must be auto, {', '.join(DTYPES)}; got {options.dtype!r}")
    try:
        check_compile_here(options.compile, options.device)
    except CompileError as err:
        raise TranslateError(str(err)) from None
    return metadata, steps, overlap


def run_translate(options: TranslateRun, log: Callable[[str], None] = print) -> TranslateSummary:
    """Translate the scenes of options.source into options.dest, holding DEST's lock for the whole run (a
    second run into DEST stops with TranslateError) and starting from a DEST cleared of a killed run's work."""
    from s2o_platform.bundle import BundleError
    from s2o_platform.translate.sources import SourceError

    try:
        metadata, steps, overlap = check_options(options)
        scenes = discover_scenes(options.source, options.storage, dest=options.dest, asset=options.asset)
    except (BundleError, SourceError) as err:
        raise TranslateError(str(err)) from None
    started = time.perf_counter()
    summary = TranslateSummary()
    lock = DestLock(options.dest, options.storage, log)
    try:
        lock.acquire()
    except DestLockedError as err:
        raise TranslateError(str(err)) from None
    workdir = work_folder(options.dest, options.storage)
    try:
        removed = remove_leftovers(
            options.dest, options.storage, {posixpath.dirname(s.name) for s in scenes if not s.refused}
        )
        if removed:
            log(
                f"[translate] removed leftovers of an earlier run that did not finish: {', '.join(removed[:3])}"
                + (f" and {len(removed) - 3} more" if len(removed) > 3 else "")
            )
        os.makedirs(workdir)
        save_config(options)
        manifest = Manifest(options.dest, options.storage, log)
        manifest.run_model = model_identity(
            options.model, metadata.stage, steps, options.seed, options.uncertainty, options.storage
        )
        manifest.scene_sources = {
            s.uri: {
                "source_item": s.source_item,
                "datetime": s.datetime,
                "datetime_source": DATETIME_FROM_ITEM if s.datetime else None,
            }
            for s in scenes
            if s.source_item
        }
        try:
            _translate_scenes(scenes, metadata, steps, overlap, options, manifest, summary, workdir, log)
        finally:
            try:
                manifest.compact()
            except Exception as err:  # noqa: BLE001 - every record is already written; compacting only tidies them
                log(
                    f"[translate] warning: could not compact {manifest.shown} ({type(err).__name__}: {err}); "
                    f"its records stay as written"
                )
        # quicklooks, DEST/catalog.json and DEST/index.html from the manifest: after the scenes, never instead
        try:
            summary.warnings = publish(
                options.dest, manifest, set(summary.done), options.band, options.storage, log
            )
        except Exception as err:  # noqa: BLE001 - the outputs and the manifest are written: this only shows them
            summary.warnings = [f"quicklooks, catalog and gallery not written ({type(err).__name__}: {err})"]
            log(f"[translate] warning: {summary.warnings[0]}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        lock.release()
    summary.seconds = time.perf_counter() - started
    return summary


def _output_is_the_scene(scene: Scene, options: TranslateRun, dest_root: str) -> bool:
    """DEST/<name>.tif is the scene itself (DEST = the scene's folder): translating would overwrite the input."""
    if storage.is_uri(options.dest) or storage.is_uri(scene.uri):
        return storage.join(options.dest, scene.output_name) == scene.uri
    return os.path.realpath(storage.join(dest_root, scene.output_name)) == os.path.realpath(scene.uri)


def _translate_scenes(
    scenes: list[Scene],
    metadata,
    steps,
    overlap,
    options: TranslateRun,
    manifest: Manifest,
    summary: TranslateSummary,
    workdir: str,
    log,
) -> None:
    dest_fs, dest_root = storage.resolve(options.dest, options.storage)
    listing = manifest.listing()  # which outputs are there: a listing, not a request per scene
    infos: list[SceneInfo] = []
    for scene in scenes:
        if scene.refused:
            _fail(manifest, summary, scene.uri, scene.refused, log)
            continue
        if _output_is_the_scene(scene, options, dest_root):
            _fail(
                manifest,
                summary,
                scene.uri,
                f"its output {scene.output_name} in {options.dest} would overwrite the scene "
                f"itself: choose another --out",
                log,
            )
            continue
        if manifest.is_done(scene.uri, listing):
            summary.skipped.append(scene.uri)
            continue
        try:
            info = inspect_scene(
                scene.uri,
                scene.name,
                options.band,
                options.sar_scale,
                metadata.tile_size,
                overlap,
                metadata.sar_normalization,
                options.storage,
                target_crs=options.target_crs,
                target_resolution=options.target_resolution,
            )
        except InputError as err:
            _fail(manifest, summary, scene.uri, str(err), log)
            continue
        except Exception as err:  # noqa: BLE001 - a read failing anywhere in the checks (a file cut off midway) is this scene's reason
            _fail(manifest, summary, scene.uri, f"cannot read it: {type(err).__name__}: {err}", log)
            continue
        warped = " (ground control points, warped onto a regular grid)" if info.warp else ""
        log(
            f"[translate] {scene.uri}: {info.width}x{info.height} px{warped}, {info.n_tiles} tiles, SAR scale {info.scale} ({info.scale_reason})"
        )
        infos.append(info)
    if infos:
        _stream(infos, options, steps, manifest, summary, dest_fs, dest_root, workdir, log)


def _fail(manifest: Manifest, summary: TranslateSummary, uri: str, reason: str, log, tiles: int = 0) -> None:
    manifest.record(SceneRecord(scene=uri, status="failed", reason=reason, tiles=tiles))
    summary.failed.append((uri, reason))
    log(f"[translate] FAILED {uri}: {reason}")


def _stream(infos, options, steps, manifest, summary, dest_fs, dest_root, workdir, log) -> None:
    from s2o_platform.data.ray_context import scoped_data_context

    # preserve_order: each scene's tiles reach its mosaic row by row; no Ray progress bars: ours (tiles of all
    # scenes) says more. For this run's dataset only, its creation and iteration both inside the block.
    with scoped_data_context(
        preserve_order=True, enable_progress_bars=False, enable_progress_bar_name_truncation=True
    ):
        _stream_in_order(infos, options, steps, manifest, summary, dest_fs, dest_root, workdir, log)


def _stream_in_order(infos, options, steps, manifest, summary, dest_fs, dest_root, workdir, log) -> None:
    import ray
    import ray.data
    from tqdm import tqdm

    from s2o_platform.ray_cluster import connect

    connect(None if options.address == "local" else options.address)
    actors = inference_actors(options.actors, cluster_gpus(), options.device, cluster_cpu_hosts())
    strips = [{"scene": i, "row": r} for i, info in enumerate(infos) for r in info.row_starts]
    # The model actors read their strips themselves (a strip is milliseconds of rasterio): each call
    # returns one block of a few window rows, so blocks, and the driver's buffers, stay small.
    strips_per_call = max(1, options.batch_size // max(1, min(len(i.col_starts) for i in infos)))
    translated = ray.data.from_items(strips).map_batches(
        StripTranslator,
        fn_constructor_kwargs=dict(
            infos=infos,
            driver_node=ray.get_runtime_context().get_node_id(),
            bundle=options.model,
            steps=steps,
            seed=options.seed,
            device=actors.device,
            dtype=options.dtype,
            storage_options=options.storage,
            cpu_share=actors.cpu_share,
            batch_size=options.batch_size,
            compile=options.compile,
            warm_up=False,
            uncertainty=options.uncertainty,
            uncertainty_output=options.output,
        ),
        batch_size=strips_per_call,
        **actors.map_batches_args(),
    )
    writers: dict[int, SceneWriter] = {}
    received = [0] * len(infos)
    failed: set[int] = set()
    finished: set[int] = set()
    progress = tqdm(
        total=sum(i.n_tiles for i in infos), unit="tile", disable=not options.progress, desc="translate"
    )
    scene_started: dict[int, float] = {}
    first_tile_at = None
    try:
        for batch in translated.iter_batches(batch_format="numpy", batch_size=None):
            for k in range(len(batch["scene"])):
                i = int(batch["scene"][k])
                if i in failed:
                    continue
                info = infos[i]
                if batch["error"][k]:
                    failed.add(i)
                    if i in writers:
                        writers.pop(i).abort()
                    _fail(
                        manifest,
                        summary,
                        info.uri,
                        f"reading row {int(batch['row'][k])}: {batch['error'][k]}",
                        log,
                    )
                    continue
                if first_tile_at is None:
                    first_tile_at = time.perf_counter()
                if i not in writers:
                    scene_started[i] = time.perf_counter()
                    writers[i] = SceneWriter(info, workdir, options.output_dtype, bool(options.uncertainty))
                writers[i].add(
                    int(batch["row"][k]),
                    int(batch["col"][k]),
                    batch["optical"][k],
                    batch["valid"][k],
                    batch["uncertainty"][k] if options.uncertainty else None,
                )
                received[i] += 1
                summary.tiles += 1
                progress.update(1)
                if received[i] == info.n_tiles:
                    _complete(
                        i,
                        infos,
                        writers,
                        manifest,
                        summary,
                        dest_fs,
                        dest_root,
                        options.dest if storage.is_uri(options.dest) else dest_root,
                        scene_started,
                        log,
                    )
                    finished.add(i)
    except Exception as err:  # noqa: BLE001 - the pipeline itself broke: record what was left, keep what is done
        for i, info in enumerate(infos):
            if i not in finished and i not in failed:
                if i in writers:
                    writers.pop(i).abort()
                _fail(manifest, summary, info.uri, f"pipeline error: {type(err).__name__}: {err}", log)
    finally:
        progress.close()
        for writer in writers.values():
            writer.abort()
        if first_tile_at is not None:
            summary.stream_seconds = time.perf_counter() - first_tile_at


def _complete(i, infos, writers, manifest, summary, dest_fs, dest_root, dest_uri, scene_started, log) -> None:
    info = infos[i]
    writer = writers.pop(i)
    dest_path = storage.join(dest_root, output_file(info.name))
    output_uri = storage.join(dest_uri, output_file(info.name))
    try:
        writer.finish(dest_fs, dest_path)
    except Exception as err:  # noqa: BLE001
        writer.abort()
        _fail(manifest, summary, info.uri, f"writing the output: {type(err).__name__}: {err}", log)
        return
    seconds = time.perf_counter() - scene_started[i]
    manifest.record(
        SceneRecord(
            scene=info.uri,
            status="done",
            output=output_uri,
            tiles=writer.tiles,
            seconds=round(seconds, 3),
            scale=f"{info.scale} ({info.scale_reason})",
            datetime=info.file_datetime,
            datetime_source=DATETIME_FROM_FILE if info.file_datetime else DATETIME_NONE,
            grid=writer.grid(),
        )
    )
    summary.done.append(info.uri)
    log(
        f"[translate] done {info.uri} -> {output_uri} ({writer.tiles} tiles, written {seconds:.1f} s after its first tile)"
    )


# ---------------------------------------------------------------------------------------------
# Tile stores: Parquet in, Parquet out
# ---------------------------------------------------------------------------------------------


class StoreTileTranslator(LoadedModel):
    """Store rows -> predicted tiles: tile_id, the predicted optical tile (uint8 HWC bytes, as the store
    encodes optical tiles), and its ground truth, so evaluation at scale can score them."""

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from s2o_platform.data.normalization import model_to_uint8
        from s2o_platform.data.store import decode_batch

        batch = decode_batch(rows)
        optical = self.translate(batch["sar"], str(batch["tile_id"][0]))
        predicted = model_to_uint8(optical).transpose(0, 2, 3, 1)
        return {
            "tile_id": batch["tile_id"].astype(str),
            "tile_size": rows["tile_size"],
            "predicted": np.array([np.ascontiguousarray(t).tobytes() for t in predicted], dtype=object),
            "optical": rows["optical"],
        }


def run_translate_store(
    options: TranslateRun, split: str = "test", log: Callable[[str], None] = print
) -> TranslateSummary:
    """Translate a tile store's split into Parquet files of predicted tiles under DEST (one run; DEST is replaced)."""
    from s2o_platform.bundle import BundleError, check_fits
    from s2o_platform.data.store import read_metadata, read_tiles, split_counts
    from s2o_platform.ray_cluster import connect

    try:
        metadata, steps, _ = check_options(options)
        store = read_metadata(options.source, options.storage)
        # optical normalisation included: the predictions are written beside the store's optical tiles, to be
        # compared with them
        check_fits(
            metadata,
            store,
            options.model,
            options.source,
            role="model",
            advice="translate a store ingested with the settings of the one it was trained on",
        )
    except BundleError as err:
        raise TranslateError(str(err)) from None
    total = split_counts(options.source, options.storage).get(split, 0)
    if not total:
        raise TranslateError(f"the store {options.source} has no tiles in its {split!r} split")
    started = time.perf_counter()
    connect(None if options.address == "local" else options.address)
    # (--device is not consulted here: auto)
    actors = inference_actors(options.actors, cluster_gpus(), cpu_hosts=cluster_cpu_hosts())
    log(f"[translate] {total} {split} tiles of {options.source} -> Parquet in {options.dest}")
    predicted = read_tiles(options.source, split, options.storage).map_batches(
        StoreTileTranslator,
        fn_constructor_kwargs=dict(
            bundle=options.model,
            steps=steps,
            seed=options.seed,
            device=actors.device,
            dtype=options.dtype,
            storage_options=options.storage,
            cpu_share=actors.cpu_share,
            batch_size=options.batch_size,
            compile=options.compile,
            warm_up=False,
        ),
        batch_size=options.batch_size,
        **actors.map_batches_args(),
    )
    fs, root = storage.resolve(options.dest, options.storage)
    predicted.write_parquet(root, filesystem=fs, mode="overwrite")
    save_config(
        options, split
    )  # after the write, which replaces DEST (readers of DEST skip names starting with _)
    summary = TranslateSummary(done=[options.source], tiles=total, seconds=time.perf_counter() - started)
    return summary
