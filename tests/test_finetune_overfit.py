"""Each fine-tuning recipe memorises 32 synthetic examples with its image encoder unfrozen: the loss falls by at
least 80% (issue 15). The recipe models of tests/test_finetune_models.py with dropout off; the frozen LLM is
pretrained on the target text first (BLIP-2's premise is a frozen *pretrained* LLM), as in tests/test_overfit.py."""

import pytest
import torch

from demo.synthetic import SyntheticConfig, make_sample
from demo.tiny_zoo import pretrain_llm, tiny_stage1, tiny_stage2
from pipeline.images import to_pixel_values
from pipeline.losses import itc_similarities, stage1_losses, stage2_losses
from pipeline.models.finetune import recipe_model_config
from pipeline.models.stage1 import Blip2Stage1
from pipeline.models.stage2 import Blip2Stage2
from tests.test_finetune_models import BIG
from tests.test_overfit import _fit

pytestmark = pytest.mark.slow
# the 64-wide Q-Former of tests/test_overfit.py: at 32 wide ITC does not reach its label-smoothing floor (0.65)
WIDE = {"dropout": 0.0, "bert_init": None, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4}


@pytest.mark.parametrize("recipe", ["caption", "vqa", "retrieval"])
def test_recipe_overfits_32_examples(tiny_zoo, recipe, tmp_path):
    samples = [make_sample(SyntheticConfig(image_size=BIG), "train", i) for i in range(32)]
    x = to_pixel_values([s["jpg"] for s in samples], BIG)
    caps = [s["txt"] for s in samples]
    qa = [s["json"]["qa"][0] for s in samples]  # "what color is the <shape>?" -> colour
    if recipe == "retrieval":
        torch.manual_seed(0)
        m = Blip2Stage1(recipe_model_config(recipe, tiny_stage1(tiny_zoo, **WIDE),
                                            image_size=BIG)).train()
        t, g = m.tokenize(caps), torch.Generator().manual_seed(0)
        first, last = _fit(m, lambda i: stage1_losses(m(x, **t, generator=g)), steps=1200, lr=1e-3, cosine=False,
                           decay_steps=400)
        keys = ("itc_loss", "itm_loss", "itg_loss")
        # Label smoothing 0.1 puts ITC's floor at 0.651 for 32 classes, 18.8% of its start: the 80% bar needs the
        # model within 0.04 of it. 900 steps ended at 0.756 with one caption retrieving the wrong image; 1200 end
        # at 0.662. And every image retrieves its own caption, every caption its own image.
        with torch.no_grad():
            out = m(x, **t, generator=g)
            sim_i2t, sim_t2i = itc_similarities(out["image_feats"], out["text_feat"], out["temp"])
        assert torch.equal(sim_i2t.argmax(1), torch.arange(len(caps)))
        assert torch.equal(sim_t2i.argmax(1), torch.arange(len(caps)))
    else:
        zoo = {**tiny_zoo, "opt": str(tmp_path / "opt")}
        pretrain_llm(tiny_zoo["opt"], caps, zoo["opt"], steps=400)  # caption text: the words, not the QA format
        torch.manual_seed(0)
        cfg = recipe_model_config(recipe, tiny_stage2(zoo, "opt", tokenizer=zoo["bert"], **{k: v for k, v in WIDE.items() if k != "bert_init"}),
                                  image_size=BIG)
        cfg.max_txt_len = 32  # the tiny tokenizers spell "Question:" in several tokens
        m = Blip2Stage2(cfg).train()
        t = m.tokenize_vqa([q["question"] for q in qa], [q["answer"] for q in qa]) if recipe == "vqa" \
            else m.tokenize(caps)
        first, last = _fit(m, lambda i: stage2_losses(m(x, **t)), steps=600, lr=3e-3, cosine=False)
        keys = ("lm_loss",)
    print(recipe, "first", first, "last", last)
    for k in keys:
        assert last[k] <= 0.2 * first[k], (recipe, k, first[k], last[k])
