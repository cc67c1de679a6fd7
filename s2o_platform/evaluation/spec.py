"""Which models to evaluate: `NAME=BUNDLE[@SAMPLER[:STEPS[,STEPS...]]]`, one setting per step count."""

from __future__ import annotations

import re
from dataclasses import dataclass

from s2o_platform.errors import S2OError

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class SpecError(S2OError, ValueError):
    """A --model argument that cannot be parsed."""


class EvalError(S2OError, ValueError):
    """Input that makes the evaluation impossible; raised before any work (here, the lowest module of
    evaluation, so every part of it raises the one class; `runner` re-exports it)."""


@dataclass(frozen=True)
class ModelSetting:
    """One row of the report: a bundle sampled with one sampler and step count.

    `sampler`/`steps` are None until resolved against the bundle's defaults.
    """

    name: str
    bundle: str
    sampler: str | None = None
    steps: int | None = None

    @property
    def label(self) -> str:
        if self.sampler is None:
            return self.name
        if self.sampler == "direct":
            return f"{self.name} (1 step)"
        return f"{self.name} {self.sampler}-{self.steps}"


def parse_model_spec(text: str) -> list[ModelSetting]:
    """`acd=runs/s/bundle@lcm:1,2,4` -> three settings; `pix2pix=runs/g/bundle` -> one (bundle defaults)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise SpecError(
            f"--model {text!r}: expected NAME=BUNDLE[@SAMPLER:STEPS], e.g. acd=runs/s/bundle@lcm:1,2,4,8"
        )
    if not _NAME.match(name):
        raise SpecError(f"--model {text!r}: the name {name!r} may use letters, digits, '_', '-' and '.' only")
    # s3://bucket/x@lcm:4 - split on the last '@' so '@' inside a path is kept
    path, at, sampler_spec = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if not at:
        return [ModelSetting(name, rest)]
    sampler, _, steps_text = sampler_spec.partition(":")
    if not sampler:
        raise SpecError(f"--model {text!r}: no sampler after '@' (ddpm, ddim, lcm or direct)")
    if not steps_text:
        return [ModelSetting(name, path, sampler)]
    try:
        steps = [int(s) for s in steps_text.split(",")]
    except ValueError:
        raise SpecError(
            f"--model {text!r}: steps must be integers separated by commas, got {steps_text!r}"
        ) from None
    if any(s < 1 for s in steps):
        raise SpecError(f"--model {text!r}: steps must be >= 1")
    return [ModelSetting(name, path, sampler, s) for s in steps]


def unique_labels(settings: list[ModelSetting]) -> None:
    """Two rows with one label would make the report ambiguous."""
    seen: set[str] = set()
    for s in settings:
        if s.label in seen:
            raise SpecError(f"{s.label!r} is asked for twice; give the models different names")
        seen.add(s.label)
