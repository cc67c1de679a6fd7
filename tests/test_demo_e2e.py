"""`s2o demo`'s presets. The demo itself runs end to end once in the suite, from the installed wheel
(tests/test_wheel.py: every stage's artefacts, the summary, and a second run that reuses them)."""

from __future__ import annotations

import pytest

from s2o_platform.demo import PRESETS, DemoError, choose_preset


def test_presets_and_auto_choice():
    assert choose_preset("tiny").name == "tiny" and not PRESETS["tiny"].use_gpu
    assert PRESETS["gpu-small"].use_gpu
    import torch

    assert choose_preset(None).name == ("gpu-small" if torch.cuda.is_available() else "tiny")
    with pytest.raises(DemoError, match="unknown preset 'huge'"):
        choose_preset("huge")
