"""Cluster YAMLs pass Ray's own autoscaler validation; their pins match pyproject.toml; no public dashboard."""

import glob
import os
import re
import tomllib

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTERS = sorted(glob.glob(os.path.join(ROOT, "cluster", "*.yaml")))


@pytest.mark.parametrize("path", CLUSTERS)
def test_ray_autoscaler_validation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load(open(path))
    # what `ray up` does: fill in the provider's defaults, then check against Ray's JSON schema
    validate_config(prepare_config(cfg))
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"] == {"CPU": 0}  # no training on the head
    spot = [n for n in cfg["available_node_types"] if n.endswith("_spot")]
    assert any(n.startswith("gpu") for n in spot) and any(n.startswith("cpu") for n in spot)
    assert all(n.replace("_spot", "_ondemand") in cfg["available_node_types"] for n in spot if n.startswith("gpu"))


@pytest.mark.parametrize("path", CLUSTERS)
def test_setup_pins_match_pyproject(path):
    deps = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]["dependencies"]
    pinned = {re.split(r"[\[=]", d)[0]: d.split("==")[1] for d in deps}
    text = "\n".join(yaml.safe_load(open(path))["setup_commands"])
    found = re.findall(r'"([a-z0-9_-]+)(?:\[[^\]]*\])?==([^"]+)"', text)
    assert found, "setup_commands pin nothing"
    for name, version in found:
        assert pinned[name] == version, (name, version, pinned[name])
    assert "requirements.lock" in text


@pytest.mark.parametrize("path", CLUSTERS)
def test_dashboard_not_public_and_no_secrets(path):
    text = open(path).read()
    assert "--dashboard-host=0.0.0.0" not in text and "--dashboard-host=127.0.0.1" in text
    assert not re.search(r"(?i)aws_secret_access_key\s*[:=]|AKIA[0-9A-Z]{16}", text)


def test_validation_catches_a_bad_key():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load(open(CLUSTERS[0]))
    cfg["max_wokers"] = 3
    with pytest.raises(Exception, match="max_wokers"):
        validate_config(prepare_config(cfg))
