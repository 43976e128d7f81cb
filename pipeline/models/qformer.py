"""The Q-Former on transformers' ``Blip2QFormerModel`` + ``Blip2TextEmbeddings``, with what transformers lacks:
the text FFN path (``use_qformer_text_input``), the BERT LM head tied to the word embeddings, the ``[DEC]``
token, and BERT initialisation with the query FFN copied from the text FFN (reference: LAVIS Qformer.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, Blip2QFormerConfig, Blip2QFormerModel
from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

from pipeline.losses import additive_mask, itg_attention_mask
from pipeline.models.loading import resolve


@dataclass
class QFormerConfig:
    tokenizer: str = "bert-base-uncased"  # BERT tokenizer; [DEC] is added as bos_token
    bert_init: str | None = "bert-base-uncased"  # BERT weights to start from; None = random init
    num_query_tokens: int = 32
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_freq: int = 2
    max_position_embeddings: int = 512
    dropout: float = 0.1
    embed_dim: int = 256  # ITC projection width
    max_txt_len: int = 32
    # Weight-init std (BERT's 0.02, tuned for width 768). At width 64 two 0.02 projections shrink what cross-attention
    # adds to the queries ~40x, and ITC idles at ln(batch) for hundreds of steps; ~1/sqrt(width) avoids that.
    initializer_range: float = 0.02


def load_tokenizer(name_or_path: str):
    tok = AutoTokenizer.from_pretrained(resolve(name_or_path), truncation_side="right")
    if tok.bos_token != "[DEC]":
        tok.add_special_tokens({"bos_token": "[DEC]"})
    return tok


def hf_config(cfg: QFormerConfig, encoder_width: int, vocab_size: int, text: bool) -> Blip2QFormerConfig:
    return Blip2QFormerConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=cfg.max_position_embeddings, cross_attention_frequency=cfg.cross_attention_freq,
        encoder_hidden_size=encoder_width, use_qformer_text_input=text, layer_norm_eps=1e-12, pad_token_id=0,
        initializer_range=cfg.initializer_range,
    )


class LMHead(nn.Module):
    """BERT MLM head: dense -> GELU -> LayerNorm -> decoder tied to the word embeddings (+ bias)."""

    def __init__(self, hidden: int, vocab: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.layer_norm = nn.LayerNorm(hidden, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.layer_norm(F.gelu(self.dense(hidden))), word_embeddings, self.bias)


class QFormer(nn.Module):
    """Query tokens + Q-Former. With ``text=True`` it also owns the text embeddings, text FFNs and LM head."""

    def __init__(self, cfg: QFormerConfig, encoder_width: int, vocab_size: int, text: bool = True):
        super().__init__()
        self.cfg = cfg
        self.hf_config = hf_config(cfg, encoder_width, vocab_size, text)
        self.num_query = cfg.num_query_tokens
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_query_tokens, cfg.hidden_size))
        nn.init.normal_(self.query_tokens, std=cfg.initializer_range)
        self.qformer = Blip2QFormerModel(self.hf_config)
        self.text = text
        if text:
            self.embeddings = Blip2TextEmbeddings(self.hf_config)
            self.embeddings.apply(self.qformer._init_weights)
            self.lm_head = LMHead(cfg.hidden_size, vocab_size, 1e-12)

    def _run(self, embeds, query_length, mask=None, image_embeds=None):
        enc_mask = None
        if image_embeds is not None:
            image_embeds = image_embeds.to(self.query_tokens.dtype)  # fp32 features into a bf16/fp16 Q-Former
            enc_mask = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=image_embeds.device)
        return self.qformer(query_embeds=embeds, query_length=query_length, attention_mask=mask,
                            encoder_hidden_states=image_embeds, encoder_attention_mask=enc_mask).last_hidden_state

    def encode_queries(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Queries attend to queries and (by cross-attention) the image: [B, Q, H]."""
        q = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        return self._run(q, self.num_query, image_embeds=image_embeds)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text only, bidirectional, through the text FFN: [B, L, H]."""
        return self._run(self.embeddings(input_ids=input_ids), 0, attention_mask)

    def encode_multimodal(self, input_ids, attention_mask, image_embeds) -> torch.Tensor:
        """ITM pass: queries and text attend to each other bidirectionally: [B, Q+L, H]."""
        q = self.query_tokens.expand(input_ids.shape[0], -1, -1)
        embeds = self.embeddings(input_ids=input_ids, query_embeds=q)
        mask = torch.cat([torch.ones(q.shape[:2], dtype=attention_mask.dtype, device=q.device), attention_mask], 1)
        return self._run(embeds, self.num_query, mask, image_embeds)

    def decode_logits(self, input_ids, attention_mask, image_embeds) -> torch.Tensor:
        """ITG pass with the multimodal causal mask; LM logits for the text positions: [B, L, V].

        One pass over [queries; text] with a 3-D mask replaces LAVIS's reuse of the query K/V: the query
        rows see only queries (as in the query pass) and nothing is detached, so it is the same function.
        """
        q = self.query_tokens.expand(input_ids.shape[0], -1, -1)
        embeds = self.embeddings(input_ids=input_ids, query_embeds=q)
        mask = additive_mask(itg_attention_mask(attention_mask, self.num_query), embeds.dtype)
        hidden = self._run(embeds, self.num_query, mask, image_embeds)
        return self.lm_head(hidden[:, self.num_query:], self.embeddings.word_embeddings.weight)

    @torch.no_grad()
    def load_bert(self, name_or_path: str) -> list[str]:
        """Initialise from a BERT checkpoint; the query FFN copies the text FFN. Returns the keys not loaded."""
        from transformers import BertForMaskedLM

        bert = BertForMaskedLM.from_pretrained(resolve(name_or_path)).state_dict()
        own = self.state_dict()
        loaded = set()

        def put(dst: str, src: str):
            if src not in bert or dst not in own:
                return
            w = bert[src]
            if own[dst].shape[1:] != w.shape[1:]:
                raise ValueError(f"BERT init {name_or_path!r}: {src} has shape {tuple(w.shape)}, the Q-Former's {dst} "
                                 f"{tuple(own[dst].shape)}; the qformer sizes must match the BERT checkpoint")
            if own[dst].shape != w.shape:  # word embeddings / LM bias gain the [DEC] row; keep its fresh init
                n = min(w.shape[0], own[dst].shape[0])
                own[dst][:n].copy_(w[:n])
            else:
                own[dst].copy_(w)
            loaded.add(dst)

        put("embeddings.word_embeddings.weight", "bert.embeddings.word_embeddings.weight")
        put("embeddings.position_embeddings.weight", "bert.embeddings.position_embeddings.weight")
        for p in ("weight", "bias"):
            put(f"qformer.layernorm.{p}", f"bert.embeddings.LayerNorm.{p}")
            put(f"lm_head.dense.{p}", f"cls.predictions.transform.dense.{p}")
            put(f"lm_head.layer_norm.{p}", f"cls.predictions.transform.LayerNorm.{p}")
        put("lm_head.bias", "cls.predictions.bias")
        for i in range(self.hf_config.num_hidden_layers):
            src, dst = f"bert.encoder.layer.{i}", f"qformer.encoder.layer.{i}"
            for p in ("weight", "bias"):
                for m in ("query", "key", "value"):
                    put(f"{dst}.attention.attention.{m}.{p}", f"{src}.attention.self.{m}.{p}")
                put(f"{dst}.attention.output.dense.{p}", f"{src}.attention.output.dense.{p}")
                put(f"{dst}.attention.output.LayerNorm.{p}", f"{src}.attention.output.LayerNorm.{p}")
                for suffix in ("", "_query"):  # the query FFN starts as a copy of the text FFN
                    put(f"{dst}.intermediate{suffix}.dense.{p}", f"{src}.intermediate.dense.{p}")
                    put(f"{dst}.output{suffix}.dense.{p}", f"{src}.output.dense.{p}")
                    put(f"{dst}.output{suffix}.LayerNorm.{p}", f"{src}.output.LayerNorm.{p}")
        return sorted(set(own) - loaded)
