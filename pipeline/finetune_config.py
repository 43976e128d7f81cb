"""Config schemas of the fine-tuning jobs (jobs/finetune.py): one per recipe, defaults from the paper's appendix
and LAVIS's caption_coco_ft.yaml / retrieval_coco_ft.yaml (VQA has no LAVIS config; the paper's settings)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.data import DataConfig
from pipeline.models.finetune import FINETUNE_IMAGE_SIZE, recipe_model_config
from pipeline.models.stage1 import Stage1ModelConfig
from pipeline.models.stage2 import Stage2ModelConfig
from pipeline.storage import StorageConfig
from pipeline.train_config import OptimConfig, TrainConfig


@dataclass
class FinetuneOptimConfig(OptimConfig):
    """lr 1e-5, warmup from lr/warmup_steps (1e-8 at step 0 with 1,000 steps, LAVIS warmup_lr 1e-8), cosine to 0."""

    lr: float = 1e-5
    min_lr: float = 0.0
    warmup_steps: int = 1000
    betas: tuple[float, float] = (0.9, 0.999)  # paper appendix (ViT-g); LAVIS's runner default
    weight_decay: float = 0.05
    layer_decay: float = 1.0  # lr * decay ** (L + 1 - layer) over the ViT blocks (pipeline/layer_decay.py)


def _train(run: str, batch: int, steps: int) -> TrainConfig:
    return TrainConfig(run_name=run, batch_size=batch, max_steps=steps, checkpoint_every=1000)


@dataclass
class FinetuneJobConfig:
    """Fields every recipe has; ``init_from``: a stage-1, stage-2 or fine-tuning checkpoint URI (the weights it has
    that the model has are loaded); ``init_from_hf``: a released transformers folder."""

    recipe: str = "???"
    init_from: str | None = None
    init_from_hf: str | None = None
    storage: StorageConfig = field(default_factory=StorageConfig)


@dataclass
class CaptionJobConfig(FinetuneJobConfig):
    recipe: str = "caption"
    model: Stage2ModelConfig = field(default_factory=lambda: recipe_model_config("caption", Stage2ModelConfig()))
    data: DataConfig = field(default_factory=lambda: DataConfig(image_size=FINETUNE_IMAGE_SIZE["caption"]))
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)  # LLD 1 (OPT-2.7B, FlanT5-XL)
    # paper: batch 256 (16 x 16 GPUs), 5 epochs of COCO Karpathy train (566,747 captions): ~11,070 steps
    train: TrainConfig = field(default_factory=lambda: _train("blip2-caption", 16, 11_070))


@dataclass
class VqaJobConfig(FinetuneJobConfig):
    recipe: str = "vqa"
    model: Stage2ModelConfig = field(default_factory=lambda: recipe_model_config("vqa", Stage2ModelConfig()))
    data: DataConfig = field(default_factory=lambda: DataConfig(image_size=FINETUNE_IMAGE_SIZE["vqa"]))
    optim: FinetuneOptimConfig = field(default_factory=lambda: FinetuneOptimConfig(layer_decay=0.95))
    # paper: batch 128 (8 x 16 GPUs), 5 epochs of VQAv2 train+val (658,111 questions): ~25,700 steps
    train: TrainConfig = field(default_factory=lambda: _train("blip2-vqa", 8, 25_700))


@dataclass
class RetrievalJobConfig(FinetuneJobConfig):
    recipe: str = "retrieval"
    model: Stage1ModelConfig = field(default_factory=lambda: recipe_model_config("retrieval", Stage1ModelConfig()))
    data: DataConfig = field(default_factory=lambda: DataConfig(image_size=FINETUNE_IMAGE_SIZE["retrieval"]))
    optim: FinetuneOptimConfig = field(default_factory=lambda: FinetuneOptimConfig(layer_decay=0.95))
    # paper: batch 224 (14 x 16 GPUs), 5 epochs of COCO Karpathy train (566,747 captions): ~12,650 steps
    train: TrainConfig = field(default_factory=lambda: _train("blip2-retrieval", 14, 12_650))


JOB_CONFIGS = {"caption": CaptionJobConfig, "vqa": VqaJobConfig, "retrieval": RetrievalJobConfig}
