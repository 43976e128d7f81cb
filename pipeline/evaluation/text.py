"""Caption text as LAVIS's ``blip_caption`` processor prepares it for retrieval evaluation."""

from __future__ import annotations

import re

_PUNCT = re.compile(r"([.!\"()*#:;~])")


def pre_caption(text: str, max_words: int = 50) -> str:
    """Lowercase, ``.!"()*#:;~`` to spaces, whitespace collapsed, at most ``max_words`` words."""
    text = re.sub(r"\s{2,}", " ", _PUNCT.sub(" ", text.lower())).rstrip("\n").strip(" ")
    return " ".join(text.split()[:max_words])
