"""What `s2o serve` hands to Ray Serve from its config, checked without starting Ray: the HTTP proxies go where
the config says (serve/config.yaml: HeadOnly), not to Serve's default of every node."""

from __future__ import annotations

import pytest
import yaml

from s2o_platform.serving.runner import plan_serving, start_serving
from s2o_platform.serving.settings import DEFAULT_CONFIG
from tests.fixtures import write_smallest_bundles


class Stop(Exception):
    """Raised by the stand-in for serve.start: this test ends where Ray would start."""


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return write_smallest_bundles(tmp_path_factory.mktemp("serving-plan"), 16)["student"]


def started_with(plan, monkeypatch) -> dict:
    seen: dict = {}

    def start(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr("ray.serve.start", start)
    monkeypatch.setattr("s2o_platform.ray_cluster.connect", lambda address=None: None)
    with pytest.raises(Stop):
        start_serving(plan)
    return seen


def test_the_proxies_go_where_the_config_says(student, tmp_path, monkeypatch):
    plan = plan_serving(DEFAULT_CONFIG, model=student, port=18_321)
    assert plan.proxy_location == "HeadOnly"  # serve/config.yaml's
    seen = started_with(plan, monkeypatch)
    assert seen["proxy_location"] == "HeadOnly"
    assert seen["http_options"]["port"] == 18_321 and seen["http_options"]["host"] == "127.0.0.1"
    config = yaml.safe_load(open(DEFAULT_CONFIG))
    config["proxy_location"] = "EveryNode"
    every_node = tmp_path / "serve.yaml"
    every_node.write_text(yaml.safe_dump(config))
    assert started_with(plan_serving(every_node, model=student), monkeypatch)["proxy_location"] == "EveryNode"
