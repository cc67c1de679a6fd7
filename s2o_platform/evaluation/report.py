"""The evaluation report: one row per model setting, speed-ups against the teacher, and its renderings
(report.json, report.md, a console table, tradeoff.png, samples.png)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from s2o_platform.evaluation.uncertainty import GAUSSIAN_ABS_ERROR_PER_SIGMA, UNCERTAINTY_PIXELS_PER_TILE

#: The paper's speed references: the teacher with ancestral DDPM over all steps and DDIM with 50 steps.
REFERENCE_DDIM_STEPS = 50
#: FID from fewer images than this is biased upwards and noisy (the usual minimum; Heusel et al. use 50k).
FID_RECOMMENDED_SAMPLES = 2048


@dataclass
class Row:
    model: str
    label: str
    bundle: str
    stage: str
    sampler: str
    steps: int
    tiles: int = 0
    psnr: float | None = None
    ssim: float | None = None
    colour_error: float | None = None
    sharpness_ratio: float | None = None  # mean gradient magnitude, prediction / ground truth
    identity_ratio: float | None = None  # mean |prediction - SAR| / mean |prediction - ground truth|
    landcover_accuracy: float | None = (
        None  # the land-cover classifier on the translations, against the true classes
    )
    landcover_miou: float | None = None
    uncertainty: dict | None = (
        None  # s2o eval --uncertainty: {"samples", "pixels", "spearman", "mean_spread",
    )
    # "mean_abs_error", "calibration": [{"lo", "hi", "pixels", "mean_uncertainty", "mean_abs_error"}, ...]}
    paired: dict | None = (
        None  # {"reference", "tiles", "delta_psnr", "ci95": [lo, hi]}: per-tile PSNR difference
    )
    fid: float | None = None
    fid_samples: int | None = None  # images the FID was computed from
    fid_note: str | None = None
    latency_ms: float | None = None
    throughput: float | None = None  # images/s at the report's batch size
    speedup_vs_ddpm: float | None = None
    speedup_vs_ddim: float | None = None
    error: str | None = None
    speed_only: bool = False  # a teacher reference timed for the speed-ups, not asked for by the user
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    rows: list[Row]
    context: dict[str, Any]  # data, split, tiles, seed, device, dtype, threads, batch size, FID status...

    def to_dict(self) -> dict[str, Any]:
        return {**self.context, "rows": [asdict(r) for r in self.rows]}


def is_ddpm_reference(row: Row) -> bool:
    return row.stage == "teacher" and row.sampler == "ddpm" and row.latency_ms is not None


def is_ddim_reference(row: Row) -> bool:
    return (
        row.stage == "teacher"
        and row.sampler == "ddim"
        and row.steps == REFERENCE_DDIM_STEPS
        and row.latency_ms is not None
    )


def add_speedups(rows: list[Row]) -> dict[str, str | None]:
    """Set speedup_vs_ddpm / speedup_vs_ddim = reference latency / row latency (batch 1, same run).

    Returns, per reference, the label of the row used, or None where no teacher row exists.
    """
    used: dict[str, str | None] = {}
    for key, test in (("ddpm", is_ddpm_reference), ("ddim", is_ddim_reference)):
        reference = next((r for r in rows if test(r)), None)
        used[key] = reference.label if reference else None
        for row in rows:
            if reference is not None and row.latency_ms:
                setattr(row, f"speedup_vs_{key}", reference.latency_ms / row.latency_ms)
    return used


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


TABLE_COLUMNS = (
    "model",
    "tiles",
    "PSNR dB",
    "dPSNR [95% CI]",
    "SSIM",
    "colour err",
    "sharp",
    "ident",
    "LC acc",
    "LC mIoU",
    "unc rho",
    "FID (n)",
    "ms/img b1",
    "img/s",
    "x DDPM",
    "x DDIM-50",
)


def _paired_cell(row: Row) -> str:
    p = row.paired
    if not p:
        return "-"
    if p["reference"] == row.label:
        return "reference"
    return f"{p['delta_psnr']:+.2f} [{p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}]"


def table_cells(row: Row) -> list[str]:
    if row.error:
        return [row.label, str(row.tiles), f"error: {row.error}"] + [""] * (len(TABLE_COLUMNS) - 3)
    return [
        row.label + (" (speed only)" if row.speed_only else ""),
        str(row.tiles) if row.tiles else "-",
        _fmt(row.psnr, ".2f"),
        _paired_cell(row),
        _fmt(row.ssim, ".3f"),
        _fmt(row.colour_error, ".2f"),
        _fmt(row.sharpness_ratio, ".2f"),
        _fmt(row.identity_ratio, ".2f"),
        _fmt(row.landcover_accuracy, ".3f"),
        _fmt(row.landcover_miou, ".3f"),
        _fmt(row.uncertainty["spearman"] if row.uncertainty else None, ".2f"),
        _fmt(row.fid, ".2f") + (f" ({row.fid_samples})" if row.fid is not None else ""),
        _fmt(row.latency_ms, ".1f"),
        _fmt(row.throughput, ".1f"),
        _fmt(row.speedup_vs_ddpm, ".1f") + ("x" if row.speedup_vs_ddpm else ""),
        _fmt(row.speedup_vs_ddim, ".1f") + ("x" if row.speedup_vs_ddim else ""),
    ]


def context_lines(report: Report) -> list[str]:
    c = report.context
    lines = [
        f"data {c['data']} split {c['split']}: {c['tiles']} tiles, seed {c['seed']}; images in [0, 1] for PSNR/SSIM",
        f"device {c['device_name']} ({c['device']}), dtype {c['dtype']}, {c.get('compile') or 'eager'}, {c['threads']} CPU threads; "
        f"latency at batch 1 after warm-up (median of {c['repeats']}), throughput at batch {c['batch_size']}",
        c["fid_status"],
    ]
    if c.get("paired_reference"):
        lines.append(
            f"dPSNR: mean per-tile PSNR difference against {c['paired_reference']} on the same tiles and seeds, "
            "with a 95% bootstrap interval over tiles"
        )
    lines.append(
        "sharp: mean gradient magnitude / the ground truth's (1 = as sharp; blur < 1, noise > 1); "
        "ident: mean |prediction - SAR| / mean |prediction - truth| (below 1: closer to its input than to the truth)"
    )
    if c.get("uncertainty_samples"):
        lines.append(
            f"unc rho: Spearman's rank correlation between each pixel's spread over {c['uncertainty_samples']} "
            "samples (std, averaged over RGB) and the first sample's absolute error (the scored one), on "
            f"{UNCERTAINTY_PIXELS_PER_TILE} fixed pixel positions per tile; the calibration table is in report.json, the reliability plot in "
            "uncertainty.png"
        )
    lc = c.get("landcover_classifier") or {}
    if lc.get("status") == "fitted":
        lines.append(
            f"LC: a per-pixel land-cover classifier fitted on {lc['train_tiles']} train tiles' ground truth "
            f"classifies each translation against the true classes; on the real optical test tiles it scores "
            f"accuracy {lc['heldout_accuracy']:.3f}, mIoU {lc['heldout_miou']:.3f} (the ceiling)"
        )
    elif lc.get("status"):
        lines.append(f"LC: {lc['status']}")
    lines += c.get("notes", [])
    return lines


def console_table(report: Report) -> str:
    cells = [list(TABLE_COLUMNS)] + [table_cells(r) for r in report.rows]
    widths = [
        max(len(row[i]) for row in cells if not row[2].startswith("error")) for i in range(len(TABLE_COLUMNS))
    ]
    out = []
    for row in cells:
        if row[2].startswith("error"):
            out.append(f"{row[0]:<{widths[0]}}  {row[2]}")
        else:
            out.append(
                "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            )
    return "\n".join(out + [""] + context_lines(report))


def markdown(report: Report) -> str:
    lines = ["# s2o evaluation report", ""]
    lines += [f"- {line}" for line in context_lines(report)]
    lines += ["", "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in report.rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in table_cells(row)) + " |")
    notes = [f"- {r.label}: {n}" for r in report.rows for n in r.notes]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def write_report(report: Report, out: Path, samples: dict[str, np.ndarray] | None = None) -> list[Path]:
    """Write report.json, report.md, tradeoff.png and (given sample images) samples.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "report.md"]
    written[0].write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False, default=_json_default))
    written[1].write_text(markdown(report))
    written.append(plot_tradeoff(report, out / "tradeoff.png"))
    if samples:
        written.append(plot_samples(samples, out / "samples.png"))
    if any(r.uncertainty and r.uncertainty["calibration"] for r in report.rows):
        written.append(plot_uncertainty(report, out / "uncertainty.png"))
    return written


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"{type(value)} is not JSON serialisable")


def plot_tradeoff(report: Report, path: Path) -> Path:
    """Quality against latency (log scale), one point per setting: how many steps are worth it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("psnr", "PSNR (dB, higher is better)"), ("ssim", "SSIM (higher is better)")]
    if any(r.fid is not None for r in report.rows):
        metrics.append(("fid", "FID (lower is better)"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.2), squeeze=False)
    names = list(dict.fromkeys(r.model for r in report.rows))
    colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    for ax, (key, title) in zip(axes[0], metrics):
        for name in names:
            points = [
                (r.latency_ms, getattr(r, key), r)
                for r in report.rows
                if r.model == name and r.latency_ms and getattr(r, key) is not None and not r.error
            ]
            if not points:
                continue
            points.sort(key=lambda p: p[0])
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=colours[name], label=name)
            for x, y, r in points:
                ax.annotate(
                    f"{r.sampler}-{r.steps}" if r.sampler != "direct" else "1 step",
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                )
        ax.set_xscale("log")
        ax.set_xlabel(f"latency per image, batch 1 (ms, log) - {report.context['device_name']}")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_uncertainty(report: Report, path: Path) -> Path:
    """The reliability plot of `--uncertainty`: per setting, the mean actual error of each calibration bin against
    its mean predicted spread, beside the line an honest Gaussian spread would follow (error = 0.80 x spread)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.rows if r.uncertainty and r.uncertainty["calibration"]]
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    top = 0.0
    for i, row in enumerate(rows):
        bins = row.uncertainty["calibration"]
        x = [b["mean_uncertainty"] for b in bins]
        y = [b["mean_abs_error"] for b in bins]
        top = max(top, *x, *y)
        rho = _fmt(row.uncertainty["spearman"], ".2f")
        ax.plot(x, y, "o-", color=plt.get_cmap("tab10")(i % 10), label=f"{row.label} (rho {rho})")
    line = np.linspace(0.0, top or 1.0, 2)
    ax.plot(
        line, GAUSSIAN_ABS_ERROR_PER_SIGMA * line, "k--", lw=1, label="calibrated (Gaussian: 0.80 x spread)"
    )
    ax.set_xlabel("predicted spread per pixel (std over samples, [0, 1] units)")
    ax.set_ylabel("mean absolute error of the first sample")
    ax.set_title(f"Is the uncertainty honest? {report.context.get('uncertainty_samples')} samples per tile")
    ax.set_xlim(left=0.0)
    ax.set_ylim(bottom=0.0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_samples(samples: dict[str, np.ndarray], path: Path) -> Path:
    """A grid: one row per tile; columns SAR | ground truth | each setting (images (N, H, W, 3|1) in [0, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(samples)
    n = min(len(v) for v in samples.values())
    fig, axes = plt.subplots(n, len(columns), figsize=(1.6 * len(columns), 1.6 * n + 0.4), squeeze=False)
    for j, title in enumerate(columns):
        for i in range(n):
            ax = axes[i][j]
            image = samples[title][i]
            ax.imshow(
                image[..., 0] if image.shape[-1] == 1 else image,
                cmap="gray" if image.shape[-1] == 1 else None,
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
