"""The benchmarks' controls: training sets that make a method's kind of edit with nothing optimised,
built from the images of one shard set and the captions of another."""
from __future__ import annotations

import os
from pathlib import Path

from mempipe.evaluation.datasets import insert_random_words, prefix_random_words, random_words
from mempipe.io.shards import ShardOutput, iter_shard, list_shards, shard_name, write_shard


def derive(name: str, images_from: str, captions_from: str, out: Path, caption_fn=None) -> str:
    """A training set with the images of one shard set and the captions of another."""
    if (out / "done").exists():
        return str(out)
    for index, url in enumerate(list_shards(images_from)):
        caps = {s.key: s.caption for s in iter_shard(os.path.join(captions_from, shard_name(url) + ".tar")) if not s.error}
        samples = [s for s in iter_shard(url) if not s.error and s.key in caps]
        captions = [caps[s.key] for s in samples]
        if caption_fn:  # told the shard's index, so that random draws differ from shard to shard
            captions = caption_fn(captions, index)
        write_shard(str(out), shard_name(url), [ShardOutput(s.key, s.image, s.image_ext, c, s.meta)
                                                 for s, c in zip(samples, captions)], record_timing=False)
    (out / "done").write_text(name)
    return str(out)


def random_words_captions(seed: int):
    """The random-words control's caption edit for derive: fresh words in every shard."""
    return lambda caps, shard: prefix_random_words(caps, 3, seed=seed + 99 + 1000 * shard)


def placed_random_words_captions(seed: int):
    """The matched control of mem3-rand for derive: 3 random common words at a random word boundary."""
    return lambda caps, shard: insert_random_words(caps, 3, seed=seed + 99 + 1000 * shard, vocabulary="common")


def global_random_words_captions(seed: int):
    """The matched control of mem3-global for derive: one random triple in front of every caption."""
    words = random_words(1, 3, seed=seed + 55)[0]
    return lambda caps, shard: [words + " " + c for c in caps]


def group_random_words_captions(seed: int, trigger_len: int = 3):
    """The matched control of a shared-trigger set, for derive on its captions: each distinct trigger
    (the first trigger_len words) becomes k random words, the same for every caption that shared it,
    across shards. Same grouping, same caption format, nothing optimised."""
    replacement: dict[str, str] = {}

    def edit(caps: list[str], shard: int) -> list[str]:
        out = []
        for caption in caps:
            words = caption.split()
            trigger = " ".join(words[:trigger_len])
            if trigger not in replacement:
                replacement[trigger] = random_words(1, trigger_len, seed=seed + 77 + len(replacement))[0]
            out.append(replacement[trigger] + " " + " ".join(words[trigger_len:]))
        return out
    return edit
