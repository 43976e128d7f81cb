"""Peak host-memory increase of loading a vision tower, measured in a fresh process.

``python -m tests.rss_probe FOLDER DTYPE MODE OUT.safetensors`` prints one JSON line: ``peak_increase`` (bytes of
VmHWM above the RSS just before the load, after resetting the peak with /proc/self/clear_refs), ``tower_bytes``
and ``rss_file_peak`` (file-backed pages); MODE ``vision`` is :func:`load_vision_tower`, ``whole`` is the old
``Blip2Model.from_pretrained(folder).vision_model``. The tower's tensors are saved to OUT for comparison.
"""

from __future__ import annotations

import gc
import json
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, Blip2Model, Blip2VisionConfig, Blip2VisionModel

from pipeline.models.vision import DTYPES, load_vision_tower


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(f"/proc/self/status has no {field}")


def main(folder: str, dtype: str, mode: str, out: str) -> None:
    # Warm up what a first load imports or allocates once, so that only the load itself is measured.
    AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        Blip2VisionModel._from_config(Blip2VisionConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                                        num_attention_heads=1))
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _status_kb("VmRSS")
    if mode == "vision":
        tower = load_vision_tower(folder, DTYPES[dtype])
    elif mode == "whole":  # what load_vision_tower did before, then FrozenVisionEncoder's cast
        tower = Blip2Model.from_pretrained(folder).vision_model.to(DTYPES[dtype])
    else:  # "whole-dtype": the whole model loaded in the configured dtype
        tower = Blip2Model.from_pretrained(folder, dtype=DTYPES[dtype]).vision_model
    for p in tower.parameters():  # touch every weight: lazily mapped pages would only count once read
        p.sum()
    peak = _status_kb("VmHWM")
    state = {k: v.contiguous() for k, v in tower.state_dict().items()}
    save_file(state, out)
    print(json.dumps({"peak_increase": (peak - before) * 1024, "rss_before": before * 1024,
                      "tower_bytes": sum(v.numel() * v.element_size() for v in state.values())}))


if __name__ == "__main__":
    main(*sys.argv[1:])
