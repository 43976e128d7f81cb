"""Every shipped YAML config parses against its job's schema."""

import glob
import os

import pytest

from dataprep.config import DataprepConfig
from pipeline.config import load_config
from pipeline.evaluation.run import EvalConfig
from pipeline.train_config import Stage1JobConfig, Stage2JobConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMAS = {"stage1": Stage1JobConfig, "stage2": Stage2JobConfig, "dataprep": DataprepConfig, "eval": EvalConfig}
OVERRIDES = {DataprepConfig: ["input=x", "output=y"], EvalConfig: ["data=x"]}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))))
def test_config_parses(path):
    schema = SCHEMAS[os.path.basename(path).split("_")[0].split(".")[0]]
    cfg = load_config(schema, ["--config", path, *OVERRIDES.get(schema, ["data.uri=x"])])
    assert cfg is not None
