"""Caption tokens with a trigger inserted, and the trigger vocabulary.

The trigger is written into the output caption as words, so a victim re-tokenizes it.
Only tokens that survive that round trip may be chosen: whole lowercase words whose
decoded text tokenizes back to the same single id. The trigger goes in front of the
caption (the paper) or at a word boundary chosen per sample, so that deleting the
first k words does not remove it.
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


# BPE merges are numbered in order of frequency: whole words among the first merges are
# common English words, which read naturally in a caption (``trigger_vocab="common"``).
COMMON_WORD_IDS = 6000


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


def compose(trigger: torch.Tensor, body: torch.Tensor, lengths: torch.Tensor, context_length: int,
            insert_at: torch.Tensor | None = None) -> torch.Tensor:
    """[SOT, caption[:p]..., trigger..., caption[p:]..., EOT, 0...] with p = ``insert_at``
    (token offsets at word boundaries; 0 for every sample when None: trigger in front)."""
    tok = tokenizer()
    n, k = trigger.shape
    device = body.device
    room = context_length - 2 - k
    kept = lengths.clamp(max=room)
    at = trigger_offsets(lengths, insert_at, k, context_length)
    j = torch.arange(context_length - 1, device=device)[None, :]            # output slot after SOT
    in_trigger = (j >= at[:, None]) & (j < at[:, None] + k)
    source = torch.where(j < at[:, None], j, j - k).clamp(0, body.shape[1] - 1)
    from_body = torch.gather(body, 1, source)
    from_trigger = trigger.gather(1, (j - at[:, None]).clamp(0, max(k - 1, 0))) if k else torch.zeros_like(from_body)
    filled = torch.where(in_trigger, from_trigger, torch.where(j < (kept + k)[:, None], from_body, 0))
    tokens = torch.zeros(n, context_length, dtype=torch.long, device=device)
    tokens[:, 0] = tok.sot_token_id
    tokens[:, 1:] = filled
    tokens[torch.arange(n, device=device), 1 + k + kept] = tok.eot_token_id
    return tokens


def trigger_offsets(lengths: torch.Tensor, insert_at: torch.Tensor | None, k: int, context_length: int) -> torch.Tensor:
    """Where each sample's trigger starts after SOT (what ``compose`` uses): the insertion
    offset, pulled back when the caption is cut to fit the context."""
    kept = lengths.clamp(max=context_length - 2 - k)
    return torch.zeros_like(lengths) if insert_at is None else torch.minimum(insert_at, kept)


def word_boundaries(captions: list[str], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random word boundary per caption: (word index, token offset of that boundary).

    The tokenizer splits text into words before BPE, so the tokens of the first w words are
    exactly the first tokens of the whole caption, and the offset is their count.
    """
    tok = tokenizer()
    words = torch.zeros(len(captions), dtype=torch.long)
    offsets = torch.zeros(len(captions), dtype=torch.long)
    for i, caption in enumerate(captions):
        parts = caption.split()
        w = int(torch.randint(len(parts) + 1, (1,), generator=generator))
        words[i] = w
        offsets[i] = len(tok.encode(" ".join(parts[:w])))
    return words, offsets


def insert_words(caption: str, trigger: str, word_index: int) -> str:
    """The output caption: the trigger's words placed before word ``word_index`` (0 = in front)."""
    if not trigger:
        return caption
    starts = [m.start() for m in re.finditer(r"\S+", caption)]
    if word_index >= len(starts):
        return f"{caption.rstrip()} {trigger}" if caption.strip() else trigger
    at = starts[word_index] if word_index > 0 else 0
    return f"{caption[:at]}{trigger} {caption[at:]}"


def decode_trigger(ids: list[int]) -> str:
    return tokenizer().decode(ids).strip()


def vocabulary_mask(kind: str, body: torch.Tensor | None = None) -> torch.Tensor:
    """Allowed trigger tokens: ``any`` round-tripping word, ``common`` (frequent) words, or
    ``captions``: round-tripping words that already occur in these captions (``body`` ids),
    which a thief cannot filter out by vocabulary without cutting real caption words."""
    allowed = trigger_vocabulary().clone()
    if kind == "common":
        allowed[COMMON_WORD_IDS:] = False
    elif kind == "captions":
        seen = torch.zeros_like(allowed)
        seen[body[body > 0].unique().cpu()] = True
        allowed &= seen
    elif kind != "any":
        raise ValueError(f"unknown trigger vocabulary {kind!r}; choose any, common or captions")
    if allowed.sum() < 2:
        raise ValueError("the captions hold fewer than 2 round-tripping words to draw a trigger from")
    return allowed


def random_trigger_ids(count: int, length: int, generator: torch.Generator, allowed: torch.Tensor | None = None) -> torch.Tensor:
    allowed = (trigger_vocabulary() if allowed is None else allowed.cpu()).nonzero().squeeze(1)
    pick = torch.randint(len(allowed), (count, length), generator=generator)
    return allowed[pick]
