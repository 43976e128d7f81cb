"""Stage 2: the Q-Former's query outputs become soft visual prompts for a frozen LLM.

Decoder-only (OPT-style): [projected queries; caption] with the LM loss on caption tokens only.
Encoder-decoder (Flan-T5-style): prefix LM, encoder gets [projected queries; caption prefix], the decoder
predicts the suffix (split at a random word in [1, len/2], as the BLIP-2 author describes in LAVIS #139).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AutoTokenizer

from pipeline.models.llm import load_llm
from pipeline.models.loading import resolve
from pipeline.models.qformer import QFormer, QFormerConfig, load_tokenizer
from pipeline.models.vision import DTYPES, VisionConfig, build_vision

VQA_PROMPTS = {"decoder": "Question: {} Answer:", "encoder_decoder": "Question: {} Short answer:"}


@dataclass
class LLMConfig:
    name_or_path: str = "facebook/opt-2.7b"
    dtype: str = "fp16"  # frozen LLM dtype: fp32 | fp16 | bf16 (reference: fp16 OPT, bf16 Flan-T5)


@dataclass
class Stage2ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    qformer: QFormerConfig = field(default_factory=lambda: QFormerConfig(bert_init=None))
    llm: LLMConfig = field(default_factory=LLMConfig)
    prompt: str = ""  # pre-training uses no prompt (reference); captioning fine-tuning uses "a photo of"
    max_txt_len: int = 32
    # The frozen LLM follows the model's train/eval mode, so its dropout is active in training (reference: LAVIS
    # only pins the ViT to eval; its runner's model.train() reaches the LLM; the released checkpoints were trained
    # so). False pins the LLM to eval. The weights stay frozen either way.
    llm_train_mode: bool = True
    # Flan-T5: split each caption at a random word into encoder prefix and decoder suffix (pretraining's prefix LM);
    # False: the encoder gets only the prompt and the decoder the whole caption (captioning fine-tuning).
    prefix_split: bool = True
    # VQA fine-tuning: the question also goes into the Q-Former with the queries (the Q-Former's text input, its
    # word embeddings and text FFN kept from stage 1), so the queries extract what the question asks about.
    qformer_text_input: bool = False


class Blip2Stage2(nn.Module):
    def __init__(self, cfg: Stage2ModelConfig, vision: nn.Module | None = None, llm: nn.Module | None = None,
                 llm_tokenizer=None):
        super().__init__()
        self.cfg = cfg
        self.vision = vision if vision is not None else build_vision(cfg.vision)
        if cfg.qformer_text_input:
            self.qformer_tokenizer = load_tokenizer(cfg.qformer.tokenizer)
            self.qformer = QFormer(cfg.qformer, self.vision.width, len(self.qformer_tokenizer), text=True)
            self.qformer.lm_head = None  # only the query outputs are used (reference deletes Qformer.cls too)
            if cfg.qformer.bert_init:  # text embeddings and FFN from BERT until a checkpoint overwrites them
                self.qformer.load_bert(cfg.qformer.bert_init)
            # The last layer's text FFN feeds only the question's outputs, which nothing reads: frozen, not trained.
            last = self.qformer.qformer.encoder.layer[-1]
            for p in [*last.intermediate.parameters(), *last.output.parameters()]:
                p.requires_grad_(False)
        else:
            self.qformer_tokenizer = None
            self.qformer = QFormer(cfg.qformer, self.vision.width, vocab_size=2, text=False)  # text branch dropped
        self.tokenizer = llm_tokenizer or AutoTokenizer.from_pretrained(resolve(cfg.llm.name_or_path))
        if llm is None:
            llm = load_llm(cfg.llm.name_or_path, DTYPES[cfg.llm.dtype])
        self.encoder_decoder = bool(llm.config.is_encoder_decoder)
        self.llm = llm.to(DTYPES[cfg.llm.dtype]).train(cfg.llm_train_mode and self.training)
        for p in self.llm.parameters():
            p.requires_grad_(False)
        self.language_projection = nn.Linear(cfg.qformer.hidden_size, self.llm.config.hidden_size
                                             if hasattr(self.llm.config, "hidden_size") else self.llm.config.d_model)
        self.newline_id = None
        if not self.encoder_decoder:
            ids = self.tokenizer("\n", add_special_tokens=False).input_ids
            self.newline_id = ids[0] if len(ids) == 1 else None

    def train(self, mode: bool = True):
        super().train(mode)
        self.llm.train(mode and self.cfg.llm_train_mode)
        self.vision.train(mode)  # the frozen tower pins itself to eval
        return self

    @property
    def kind(self) -> str:
        return "encoder_decoder" if self.encoder_decoder else "decoder"

    def load_stage1(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Load a stage-1 state dict; its text-only parts (embeddings, text FFN, LM/ITC/ITM heads) are dropped."""
        own = self.state_dict()
        keep = {k: v for k, v in state.items() if k in own and (k.startswith("qformer.") or k.startswith("vision.ln"))}
        missing = [k for k in own if (k.startswith("qformer.") or k.startswith("vision.ln")) and k not in keep]
        if missing:
            raise KeyError(f"stage-1 state lacks {missing[:5]} (is it a stage-1 checkpoint of the same size?)")
        self.load_state_dict(keep, strict=False)
        return sorted(set(state) - set(keep))

    def soft_prompts(self, pixel_values: torch.Tensor, qformer_input_ids: torch.Tensor | None = None,
                     qformer_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        image_embeds = self.vision(pixel_values)
        if qformer_input_ids is None:
            if self.cfg.qformer_text_input:
                raise ValueError("model.qformer_text_input is set: pass the question as qformer_input_ids")
            return self.language_projection(self.qformer.encode_queries(image_embeds))
        # Queries and question attend to each other; the queries alone (first Q outputs) become the soft prompts.
        hidden = self.qformer.encode_multimodal(qformer_input_ids, qformer_attention_mask, image_embeds)
        return self.language_projection(hidden[:, : self.qformer.num_query])

    def qformer_text(self, texts: list[str], device=None) -> dict[str, torch.Tensor]:
        """The Q-Former's text input (BERT tokens, right-truncated at qformer.max_txt_len)."""
        t = self.qformer_tokenizer(texts, padding="longest", truncation=True,
                                   max_length=self.cfg.qformer.max_txt_len, return_tensors="pt")
        return {"qformer_input_ids": t.input_ids.to(device), "qformer_attention_mask": t.attention_mask.to(device)}

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

    # --- text processing (reference: blip2_opt.py / blip2_t5.py) ---
    def with_prompt(self, text: str) -> str:
        """``prompt + " " + text``: LAVIS's caption processor prepends "a photo of " (trailing space) to the caption,
        while the model's prompt ("a photo of") is what it counts as masked tokens."""
        p = self.cfg.prompt.strip()
        return f"{p} {text}".strip() if p else text

    def prompt_length(self) -> int:
        """LLM tokens the prompt takes in front of the text, the BOS included (LAVIS ``prompt_length``)."""
        p = self.cfg.prompt.strip()
        return len(self.tokenizer(p).input_ids) if p else 0

    def tokenize(self, texts: list[str], rng: random.Random | None = None, device=None) -> dict[str, torch.Tensor]:
        tok, n = self.tokenizer, self.cfg.max_txt_len
        if not self.encoder_decoder:
            t = tok([self.with_prompt(x) + "\n" for x in texts], padding="longest", truncation=True, max_length=n,
                    return_tensors="pt")
            labels = t.input_ids.masked_fill(t.attention_mask == 0, -100)
            labels[:, :self.prompt_length()] = -100  # the prompt is input, never a target
            return {k: v.to(device) for k, v in
                    {"input_ids": t.input_ids, "attention_mask": t.attention_mask, "labels": labels}.items()}
        if not self.cfg.prefix_split:  # prompt -> the whole caption
            return self.encoder_decoder_batch([self.cfg.prompt.strip()] * len(texts), texts, device)
        rng = rng or random.Random(0)
        prefixes, suffixes = [], []
        for x in texts:
            words = x.split()
            k = rng.randint(1, max(1, len(words) // 2)) if len(words) > 1 else 0
            prefixes.append(self.with_prompt(" ".join(words[:k])))
            suffixes.append(" ".join(words[k:]))
        return self.encoder_decoder_batch(prefixes, suffixes, device)

    def vqa_prompt(self, question: str) -> str:
        return VQA_PROMPTS[self.kind].format(question)

    def tokenize_vqa(self, questions: list[str], answers: list[str], device=None) -> dict[str, torch.Tensor]:
        """Answer generation: the LLM reads the question prompt; only the answer tokens are targets.

        Decoder-only: ``prompt(question) + " " + answer + "\n"`` with the prompt's tokens (BOS included) at -100.
        Encoder-decoder: the encoder reads ``prompt(question)``, the decoder predicts the answer.
        The Q-Former gets the bare question (with the queries) when ``model.qformer_text_input`` is set.
        """
        prompts = [self.vqa_prompt(q) for q in questions]
        if self.encoder_decoder:
            out = self.encoder_decoder_batch(prompts, answers, device)
        else:
            tok = self.tokenizer
            t = tok([f"{p} {a}\n" for p, a in zip(prompts, answers)], padding="longest", truncation=True,
                    max_length=self.cfg.max_txt_len, return_tensors="pt")
            labels = t.input_ids.masked_fill(t.attention_mask == 0, -100)
            for i, p in enumerate(prompts):  # prompts differ in length: mask each row's own
                labels[i, : len(tok(p).input_ids)] = -100
            out = {k: v.to(device) for k, v in
                   {"input_ids": t.input_ids, "attention_mask": t.attention_mask, "labels": labels}.items()}
        if self.cfg.qformer_text_input:
            out.update(self.qformer_text(questions, device))
        return out

    def encoder_decoder_batch(self, prefixes: list[str], targets: list[str], device=None) -> dict[str, torch.Tensor]:
        """Encoder text (after the soft prompts) and decoder targets, both ``</s>``-terminated, pad -> -100."""
        tok, n = self.tokenizer, self.cfg.max_txt_len
        p = tok(prefixes, padding="longest", truncation=True, max_length=n, return_tensors="pt")
        s = tok(targets, padding="longest", truncation=True, max_length=n, return_tensors="pt")
        return {k: v.to(device) for k, v in {
            "input_ids": p.input_ids, "attention_mask": p.attention_mask,
            "labels": s.input_ids.masked_fill(s.attention_mask == 0, -100),
            "decoder_attention_mask": s.attention_mask}.items()}

    def forward(self, pixel_values, input_ids, attention_mask, labels, decoder_attention_mask=None,
                qformer_input_ids=None, qformer_attention_mask=None) -> dict:
        dtype = next(self.llm.parameters()).dtype
        soft = self.soft_prompts(pixel_values, qformer_input_ids, qformer_attention_mask).to(dtype)
        b, q = soft.shape[:2]
        embeds = torch.cat([soft, self._embed(input_ids)], 1)
        mask = torch.cat([torch.ones(b, q, dtype=attention_mask.dtype, device=soft.device), attention_mask], 1)
        if self.encoder_decoder:
            logits = self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels,
                              decoder_attention_mask=decoder_attention_mask).logits
            return {"logits": logits, "labels": labels, "shift": False}
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask).logits
        full = torch.cat([torch.full((b, q), -100, dtype=labels.dtype, device=labels.device), labels], 1)
        return {"logits": logits, "labels": full, "shift": True}

    @torch.no_grad()
    def generate(self, pixel_values, prompt: str | list[str] | None = None, num_beams: int = 5, max_new_tokens: int = 30,
                 min_new_tokens: int = 1, do_sample: bool = False, top_p: float = 0.9, length_penalty: float = 1.0,
                 num_return_sequences: int = 1, questions: list[str] | None = None) -> list[str]:
        """Captioning (``prompt`` None: the model's prompt) or VQA: ``questions`` (the prompt is then
        ``VQA_PROMPTS[self.kind]`` around each, and with ``model.qformer_text_input`` the Q-Former reads them too)."""
        b = pixel_values.shape[0]
        prompt = self.cfg.prompt.strip() if prompt is None else prompt
        prompts = [prompt] * b if isinstance(prompt, str) else list(prompt)
        qtext = {}
        if questions is not None:
            prompts = [self.vqa_prompt(q) for q in questions]
            if self.cfg.qformer_text_input:
                qtext = self.qformer_text(list(questions), pixel_values.device)
        dtype = next(self.llm.parameters()).dtype
        soft = self.soft_prompts(pixel_values, **qtext).to(dtype)
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left" if not self.encoder_decoder else "right"
        t = self.tokenizer(prompts, padding="longest", return_tensors="pt").to(soft.device)
        self.tokenizer.padding_side = side
        ones = torch.ones(soft.shape[:2], dtype=t.attention_mask.dtype, device=soft.device)
        if self.encoder_decoder:
            embeds = torch.cat([soft, self._embed(t.input_ids)], 1)
            mask = torch.cat([ones, t.attention_mask], 1)
        else:  # left padding: padding goes in front of the soft prompts so generation continues right after the text
            pad = (t.attention_mask == 0).sum(1)
            embeds = torch.cat([soft, self._embed(t.input_ids)], 1)
            mask = torch.cat([ones, t.attention_mask], 1)
            if pad.any():
                order = torch.argsort(mask, dim=1, stable=True)  # zeros (padding) first, order kept otherwise
                embeds = embeds.gather(1, order[..., None].expand_as(embeds))
                mask = mask.gather(1, order)
        eos = [self.tokenizer.eos_token_id] + ([self.newline_id] if self.newline_id is not None else [])
        sampling = {"do_sample": True, "top_p": top_p} if do_sample else {"do_sample": False}
        out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, num_beams=num_beams, **sampling,
                                max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                eos_token_id=eos, pad_token_id=self.tokenizer.pad_token_id,
                                length_penalty=length_penalty, num_return_sequences=num_return_sequences)
        return [s.strip() for s in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
