"""Every shipped YAML config parses against its job's schema."""

import glob
import os

import pytest

from dataprep.config import DataprepConfig
from pipeline.config import load_config, load_yaml
from pipeline.evaluation.run import EvalConfig
from pipeline.finetune_config import JOB_CONFIGS
from pipeline.train_config import Stage1JobConfig, Stage2JobConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMAS = {"stage1": Stage1JobConfig, "stage2": Stage2JobConfig, "dataprep": DataprepConfig, "eval": EvalConfig}
OVERRIDES = {DataprepConfig: ["input=x", "output=y"], EvalConfig: ["data=x"]}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))))
def test_config_parses(path):
    kind = os.path.basename(path).split("_")[0].split(".")[0]
    schema = JOB_CONFIGS[load_yaml(path).recipe] if kind == "finetune" else SCHEMAS[kind]
    cfg = load_config(schema, ["--config", path, *OVERRIDES.get(schema, ["data.uri=x"])])
    assert cfg is not None
