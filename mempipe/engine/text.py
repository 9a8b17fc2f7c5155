"""Caption tokens with a trigger in front, and the trigger vocabulary.

The trigger is written into the output caption as words, so a victim re-tokenizes it.
Only tokens that survive that round trip may be chosen: whole lowercase words whose
decoded text tokenizes back to the same single id.
"""
from __future__ import annotations

import re
from functools import lru_cache

import torch
from open_clip.tokenizer import SimpleTokenizer

_WORD = re.compile(r"^[a-z]{3,}</w>$")


@lru_cache(maxsize=1)
def tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer()


@lru_cache(maxsize=1)
def trigger_vocabulary() -> torch.Tensor:
    """Ids of tokens that round-trip: tokenize(decode([id])) == [id]; a bool mask over the vocabulary."""
    tok = tokenizer()
    allowed = torch.zeros(len(tok.encoder), dtype=torch.bool)
    for piece, idx in tok.encoder.items():
        if _WORD.match(piece) and tok.encode(piece[:-4]) == [idx]:
            allowed[idx] = True
    return allowed


def encode_captions(captions: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption bodies (no start/end tokens), right-padded: (N x max_len ids, N lengths)."""
    tok = tokenizer()
    body = torch.zeros(len(captions), max_len, dtype=torch.long)
    lengths = torch.zeros(len(captions), dtype=torch.long)
    for i, caption in enumerate(captions):
        ids = tok.encode(caption)[:max_len]
        body[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        lengths[i] = len(ids)
    return body, lengths


def compose(trigger: torch.Tensor, body: torch.Tensor, lengths: torch.Tensor, context_length: int) -> torch.Tensor:
    """[SOT, trigger..., caption..., EOT, 0...]: the tokens of 'trigger words + " " + caption'."""
    tok = tokenizer()
    n, k = trigger.shape
    room = context_length - 2 - k
    kept = lengths.clamp(max=room)
    tokens = torch.zeros(n, context_length, dtype=torch.long, device=body.device)
    tokens[:, 0] = tok.sot_token_id
    tokens[:, 1 : 1 + k] = trigger
    width = min(room, body.shape[1])
    positions = torch.arange(width, device=body.device)
    valid = positions[None, :] < kept[:, None]
    tokens[:, 1 + k : 1 + k + width] = torch.where(valid, body[:, :width], 0)
    tokens[torch.arange(n, device=body.device), 1 + k + kept] = tok.eot_token_id
    return tokens


def decode_trigger(ids: list[int]) -> str:
    return tokenizer().decode(ids).strip()


def random_trigger_ids(count: int, length: int, generator: torch.Generator) -> torch.Tensor:
    allowed = trigger_vocabulary().nonzero().squeeze(1)
    pick = torch.randint(len(allowed), (count, length), generator=generator)
    return allowed[pick]
