import torch
from transformers import Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval, Blip2Processor

from demo.tiny_zoo import tiny_stage1, tiny_stage2
from pipeline.losses import stage1_losses
from pipeline.models.export import export_stage1, export_stage2
from pipeline.models.from_transformers import stage1_from_hf, stage2_from_hf
from pipeline.models.stage1 import Blip2Stage1
from pipeline.models.stage2 import Blip2Stage2


def _perturb(model):
    # Random init leaves LayerNorms at 1/0 and biases at 0; perturb so that a mapping error shows.
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


def test_stage2_export_gives_same_logits_and_generation(tiny_zoo, synthetic_batch, tmp_path):
    x, caps = synthetic_batch
    for llm in ("opt", "t5"):
        m = Blip2Stage2(tiny_stage2(tiny_zoo, llm)).eval()
        _perturb(m)
        out_dir = export_stage2(m, str(tmp_path / llm))
        hf = Blip2ForConditionalGeneration.from_pretrained(out_dir).eval()
        proc = Blip2Processor.from_pretrained(out_dir)
        image_id = hf.config.image_token_index
        t = m.tokenize(caps[:4])
        q = m.qformer.num_query
        ids = torch.cat([torch.full((4, q), image_id), t["input_ids"]], 1)
        mask = torch.cat([torch.ones(4, q, dtype=torch.long), t["attention_mask"]], 1)
        # Inference on both sides: with autograd on, T5's two call paths round differently (1.7e-5 on logits of ~28)
        with torch.no_grad():
            ours = m(x[:4], **t)["logits"]
            if llm == "opt":
                theirs = hf(pixel_values=x[:4], input_ids=ids, attention_mask=mask).logits
            else:
                theirs = hf(pixel_values=x[:4], input_ids=ids, attention_mask=mask, labels=t["labels"],
                            decoder_attention_mask=t["decoder_attention_mask"]).logits
        assert theirs.shape == ours.shape
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
        # greedy generation through the processor (which inserts the <image> tokens itself)
        gen_ours = m.generate(x[:4], num_beams=1, max_new_tokens=8, min_new_tokens=8)
        prompt = proc.tokenizer([""] * 4, return_tensors="pt")
        pids = torch.cat([torch.full((4, q), image_id), prompt.input_ids], 1)
        pmask = torch.ones_like(pids)
        out = hf.generate(pixel_values=x[:4], input_ids=pids, attention_mask=pmask, num_beams=1, do_sample=False,
                          max_new_tokens=8, min_new_tokens=8, eos_token_id=m.tokenizer.eos_token_id)
        if llm == "opt":
            out = out[:, pids.shape[1]:]
        gen_theirs = [s.strip() for s in proc.tokenizer.batch_decode(out, skip_special_tokens=True)]
        assert gen_theirs == gen_ours
        assert proc.num_query_tokens == q
        # and back: a Blip2ForConditionalGeneration folder seeds a stage-2 model with the same logits
        back = stage2_from_hf(out_dir).eval()
        torch.testing.assert_close(back(x[:4], **t)["logits"], ours, atol=1e-5, rtol=1e-5)


def test_stage1_export_gives_same_itm_and_itc_scores(tiny_zoo, synthetic_batch, tmp_path):
    x, caps = synthetic_batch
    m = Blip2Stage1(tiny_stage1(tiny_zoo)).eval()
    _perturb(m)
    out_dir = export_stage1(m, str(tmp_path / "ret"))
    hf = Blip2ForImageTextRetrieval.from_pretrained(out_dir).eval()
    t = m.tokenize(caps[:6])
    with torch.no_grad():
        image_embeds, image_feats = m.image_features(x[:6])
        text_feat = m.text_features(**t)
        itc_ours = torch.einsum("iqe,te->itq", image_feats, text_feat).amax(-1)
        itm_ours = m.itm_logits(t["input_ids"], t["attention_mask"], image_embeds)
        itc_hf = hf(pixel_values=x[:6], input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits_per_image
        itm_hf = hf(pixel_values=x[:6], input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                    use_image_text_matching_head=True).logits_per_image
    torch.testing.assert_close(itc_hf, itc_ours, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(itm_hf, itm_ours, atol=1e-5, rtol=1e-5)
    assert Blip2Processor.from_pretrained(out_dir).tokenizer.bos_token == "[DEC]"
    # re-import gives the same stage-1 losses (ITG head and temperature travel in the extras file)
    back = stage1_from_hf(out_dir).eval()
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = stage1_losses(m(x[:6], **t, generator=g1))
    b = stage1_losses(back(x[:6], **t, generator=g2))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
