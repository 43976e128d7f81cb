"""Each fine-tuned model exports to the transformers class that fits and gives the same logits / generations / scores
after reloading (captioning: Blip2ForConditionalGeneration, VQA: InstructBlipForConditionalGeneration, retrieval:
Blip2ForImageTextRetrieval), with the recipe's generation settings in the exported generation config."""

import pytest
import torch
from transformers import (
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
)

from pipeline.models.export import export_stage1
from pipeline.models.export_finetune import CAPTION_GENERATION, VQA_GENERATION, export_caption, export_vqa
from tests.test_export import _perturb  # perturbs every trainable weight: the tower too when it is trained
from tests.test_finetune_models import BIG, _build, _images


def _with_images(ids, mask, image_id, q):
    b = ids.shape[0]
    return (torch.cat([torch.full((b, q), image_id), ids], 1),
            torch.cat([torch.ones(b, q, dtype=mask.dtype), mask], 1))


def _decode(tok, out, n_in, decoder_only):
    return [s.strip() for s in tok.batch_decode(out[:, n_in:] if decoder_only else out, skip_special_tokens=True)]


@pytest.mark.parametrize("llm", ["opt", "t5"])
def test_caption_export_same_logits_and_beam_captions(tiny_zoo, synthetic_batch, tmp_path, llm):
    m = _build("caption", tiny_zoo, llm).eval()
    _perturb(m)
    out_dir = export_caption(m, str(tmp_path / llm))
    hf = Blip2ForConditionalGeneration.from_pretrained(out_dir).eval()
    assert hf.config.vision_config.image_size == BIG
    x = _images(3, BIG)
    q, image_id = m.qformer.num_query, hf.config.image_token_index
    t = m.tokenize(synthetic_batch[1][:3])
    ids, mask = _with_images(t["input_ids"], t["attention_mask"], image_id, q)
    extra = {} if llm == "opt" else {"labels": t["labels"], "decoder_attention_mask": t["decoder_attention_mask"]}
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x, input_ids=ids, attention_mask=mask, **extra).logits,
                                   m(x, **t)["logits"], atol=1e-5, rtol=1e-5)
    ours = m.generate(x, **CAPTION_GENERATION)  # the model's prompt, "a photo of"
    p = m.tokenizer(["a photo of"] * 3, return_tensors="pt")
    pids, pmask = _with_images(p.input_ids, p.attention_mask, image_id, q)
    # the recipe's settings from the export's generation_config.json (Blip2 passes generate kwargs to the LLM only)
    out = hf.generate(pixel_values=x, input_ids=pids, attention_mask=pmask, generation_config=hf.generation_config)
    theirs = _decode(m.tokenizer, out, pids.shape[1], llm == "opt")
    assert theirs == ours and all(len(m.tokenizer(c, add_special_tokens=False).input_ids) >= 8 for c in ours)
    assert hf.generation_config.num_beams == 5 and hf.generation_config.max_new_tokens == 30


@pytest.mark.parametrize("llm", ["opt", "t5"])
def test_vqa_export_to_instructblip_same_logits_and_answers(tiny_zoo, tmp_path, llm):
    m = _build("vqa", tiny_zoo, llm).eval()
    _perturb(m)
    out_dir = export_vqa(m, str(tmp_path / llm))
    hf = InstructBlipForConditionalGeneration.from_pretrained(out_dir).eval()
    proc = InstructBlipProcessor.from_pretrained(out_dir)
    x = _images(2, BIG)
    questions = ["what color is the circle?", "how many objects are there?"]
    t = m.tokenize_vqa(questions, ["red", "two"])
    q, image_id = m.qformer.num_query, hf.config.image_token_index
    ids, mask = _with_images(t["input_ids"], t["attention_mask"], image_id, q)
    extra = {} if llm == "opt" else {"labels": t["labels"], "decoder_attention_mask": t["decoder_attention_mask"]}
    with torch.no_grad():
        theirs = hf(pixel_values=x, qformer_input_ids=t["qformer_input_ids"],
                    qformer_attention_mask=t["qformer_attention_mask"], input_ids=ids, attention_mask=mask,
                    **extra).logits
    torch.testing.assert_close(theirs, m(x, **t)["logits"], atol=1e-5, rtol=1e-5)
    for i, question in enumerate(questions):  # one at a time: no padding to line up
        ours = m.generate(x[i:i + 1], questions=[question], **VQA_GENERATION)
        qt = proc.qformer_tokenizer([question], return_tensors="pt")
        p = m.tokenizer([m.vqa_prompt(question)], return_tensors="pt")
        pids, pmask = _with_images(p.input_ids, p.attention_mask, image_id, q)
        out = hf.generate(pixel_values=x[i:i + 1], qformer_input_ids=qt.input_ids,
                          qformer_attention_mask=qt.attention_mask, input_ids=pids, attention_mask=pmask,
                          generation_config=hf.generation_config)
        assert _decode(m.tokenizer, out, pids.shape[1], llm == "opt") == ours


def test_retrieval_export_same_itc_and_itm_scores(tiny_zoo, synthetic_batch, tmp_path):
    m = _build("retrieval", tiny_zoo).eval()
    _perturb(m)
    out_dir = export_stage1(m, str(tmp_path / "ret"))
    hf = Blip2ForImageTextRetrieval.from_pretrained(out_dir).eval()
    x = _images(4, BIG)
    t = m.tokenize(synthetic_batch[1][:4])
    with torch.no_grad():
        image_embeds, image_feats = m.image_features(x)
        itc = torch.einsum("iqe,te->itq", image_feats, m.text_features(**t)).amax(-1)
        itm = m.itm_logits(t["input_ids"], t["attention_mask"], image_embeds)
        kw = {"pixel_values": x, "input_ids": t["input_ids"], "attention_mask": t["attention_mask"]}
        torch.testing.assert_close(hf(**kw).logits_per_image, itc, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hf(**kw, use_image_text_matching_head=True).logits_per_image, itm,
                                   atol=1e-5, rtol=1e-5)
