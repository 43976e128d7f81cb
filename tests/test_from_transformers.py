"""Starting a stage or a fine-tuning recipe from a transformers BLIP-2 folder (``init_from_hf``): the model equals
the one exported (same outputs), the fine-tuning switches of the job's config stay in force, a checkpoint of it
reloads from what its model.yaml records, and a folder of the wrong class is refused by name."""

import pytest
import torch
from omegaconf import OmegaConf

from demo.tiny_zoo import tiny_stage1, tiny_stage2
from pipeline.checkpoint import save_model
from pipeline.config import ConfigError
from pipeline.data import DataConfig
from pipeline.finetune_config import CaptionJobConfig, RetrievalJobConfig, VqaJobConfig
from pipeline.losses import stage1_losses
from pipeline.models.export import export_stage1, export_stage2
from pipeline.models.finetune import recipe_model_config
from pipeline.models.stage1 import Blip2Stage1
from pipeline.models.stage2 import Blip2Stage2
from pipeline.stages import get_stage, load_model
from tests.test_export import _perturb
from tests.test_finetune_models import BIG

JOBS = {"caption": CaptionJobConfig, "vqa": VqaJobConfig, "retrieval": RetrievalJobConfig}


def _job(recipe, model_cfg, **kw):
    data = DataConfig(image_size=model_cfg.vision.image_size or 32)
    return OmegaConf.structured(JOBS[recipe](model=model_cfg, data=data, **kw))


@pytest.fixture(scope="module")
def folders(tiny_zoo, tmp_path_factory):
    """A perturbed tiny stage-2 (OPT) and stage-1 model, each exported to its transformers folder."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    s2 = Blip2Stage2(tiny_stage2(tiny_zoo, "opt")).eval()
    _perturb(s2)
    s1 = Blip2Stage1(tiny_stage1(tiny_zoo)).eval()
    _perturb(s1)
    return {"stage2": (s2, export_stage2(s2, str(root / "s2"))), "stage1": (s1, export_stage1(s1, str(root / "s1")))}


def test_caption_recipe_from_a_conditional_generation_folder(tiny_zoo, folders, synthetic_batch, tmp_path):
    ref, folder = folders["stage2"]
    x, caps = synthetic_batch
    # at the tower's own size the fine-tuning model is the exported one: same logits
    cfg = _job("caption", recipe_model_config("caption", tiny_stage2(tiny_zoo, "opt"), image_size=0),
               init_from_hf=folder)
    m = get_stage("finetune_caption").build(cfg).eval()
    assert m.cfg.prompt == "a photo of" and m.vision.trainable and m.cfg.vision.name_or_path == folder
    t = m.tokenize(caps[:4])
    with torch.no_grad():
        torch.testing.assert_close(m(x[:4], **t)["logits"], ref(x[:4], **t)["logits"], atol=1e-6, rtol=1e-6)
    # trained: the ViT and the Q-Former; frozen: the LLM, whose weights are the folder's
    assert {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad} == \
        {"vision", "qformer", "language_projection"}
    for k, v in ref.llm.state_dict().items():
        assert torch.equal(m.llm.state_dict()[k], v), k
    # at the recipe's larger size, the position embeddings are interpolated and nothing else changes
    big = get_stage("finetune_caption").build(
        _job("caption", recipe_model_config("caption", tiny_stage2(tiny_zoo, "opt"), image_size=BIG),
             init_from_hf=folder))
    assert big.vision.image_size == BIG
    w = "encoder.layers.0.mlp.fc1.weight"
    assert torch.equal(big.vision.tower.state_dict()[w], ref.vision.tower.state_dict()[w])
    # a checkpoint of it reloads alone: model.yaml names the folder as image encoder and LLM
    save_model(big, "finetune_caption", str(tmp_path / "ck"))
    stage, back = load_model(str(tmp_path / "ck"))
    assert stage.name == "finetune_caption" and back.vision.image_size == BIG
    mine, theirs = big.state_dict(), back.state_dict()
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_retrieval_recipe_from_an_image_text_retrieval_folder(tiny_zoo, folders, synthetic_batch):
    ref, folder = folders["stage1"]
    x, caps = synthetic_batch
    cfg = _job("retrieval", recipe_model_config("retrieval", tiny_stage1(tiny_zoo), image_size=0), init_from_hf=folder)
    m = get_stage("finetune_retrieval").build(cfg).eval()
    assert m.vision.trainable and m.cfg.qformer.tokenizer == folder and m.cfg.qformer.bert_init is None
    t = m.tokenize(caps[:8])
    with torch.no_grad():
        ours = stage1_losses(m(x[:8], **t, generator=torch.Generator().manual_seed(0)))
        theirs = stage1_losses(ref(x[:8], **t, generator=torch.Generator().manual_seed(0)))
    for k in ("itc_loss", "itm_loss", "itg_loss"):  # ITG head and temperature come from the extras file
        torch.testing.assert_close(ours[k], theirs[k], atol=1e-6, rtol=1e-6)


def test_vqa_recipe_from_a_conditional_generation_folder_starts_its_text_embeddings_fresh(tiny_zoo, folders, capsys):
    ref, folder = folders["stage2"]
    base = recipe_model_config("vqa", tiny_stage2(tiny_zoo, "opt", tokenizer=tiny_zoo["bert"]), image_size=0)
    m = get_stage("finetune_vqa").build(_job("vqa", base, init_from_hf=folder))
    # the Q-Former's query path is the folder's; its word embeddings have no counterpart there and say so
    for k, v in ref.qformer.qformer.state_dict().items():
        assert torch.equal(m.qformer.qformer.state_dict()[k], v), k
    assert torch.equal(m.qformer.query_tokens, ref.qformer.query_tokens)
    assert "qformer.embeddings.word_embeddings.weight" in capsys.readouterr().out


def test_wrong_folder_class_and_two_starting_points_are_refused(tiny_zoo, folders):
    base = recipe_model_config("caption", tiny_stage2(tiny_zoo, "opt"), image_size=0)
    with pytest.raises(ValueError, match=r"config.json: architectures names Blip2ForImageTextRetrieval; this model "
                                         r"starts from a Blip2ForConditionalGeneration folder"):
        get_stage("finetune_caption").build(_job("caption", base, init_from_hf=folders["stage1"][1]))
    with pytest.raises(ConfigError, match="'init_from' .* and 'init_from_hf'"):
        get_stage("finetune_caption").build(_job("caption", base, init_from_hf=folders["stage2"][1],
                                                 init_from="/some/checkpoint"))
