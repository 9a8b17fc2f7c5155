import json

import pytest
import torch
from PIL import Image

from mempipe.cli import main
from mempipe.evaluation.datasets import Defense, insert_random_words, prefix_random_words
from mempipe.evaluation.victim import retrieval_metrics


def test_retrieval_metrics_ranks_and_chance():
    eye = torch.eye(20)
    perfect = retrieval_metrics(eye, eye)
    assert perfect["i2t_R@1"] == perfect["t2i_R@1"] == 100.0 and perfect["i2t_median_rank"] == 1.0
    assert perfect["chance_R@10"] == 50.0
    # every item's partner is ranked last: R@10 of 20 items is 0
    anti = retrieval_metrics(eye, -eye + 0.5 * (1 - eye))
    assert anti["i2t_R@10"] == 0.0 and anti["t2i_R@10"] == 0.0 and anti["i2t_median_rank"] == 20.0


def test_a_collapsed_encoder_is_not_ranked_first_by_ties():
    """Identical image features tie every caption: random tie-breaking puts it at chance, not at 100."""
    images = torch.ones(100, 8) / 8 ** 0.5
    texts = torch.nn.functional.normalize(torch.randn(100, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    m = retrieval_metrics(images, texts)
    assert m["t2i_R@10"] == m["chance_R@10"] == 10.0 and m["t2i_median_rank"] == 50.5


def test_thief_countermeasures():
    assert Defense.parse("strip:3").caption("apple river stone a red circle") == "a red circle"
    assert Defense.parse("none").caption("a red circle") == "a red circle"
    image = Image.new("RGB", (16, 16), (200, 30, 30))
    gray = Defense.parse("grayscale").image(image)
    assert len(set(gray.getpixel((0, 0)))) == 1
    assert Defense.parse("jpeg:10").image(image).size == (16, 16)
    assert [str(Defense.parse(t)) for t in ("none", "jpeg:75", "strip:3", "crop")] == ["none", "jpeg:75", "strip:3", "crop"]
    for bad in ("jpeg:0", "jpeg", "strip:x", "blur"):
        with pytest.raises(ValueError, match="unknown --defense"):
            Defense.parse(bad)
    prefixed = prefix_random_words(["a red circle", "a blue box"], 3, seed=1)
    assert all(len(p.split()) == len(c.split()) + 3 and p.endswith(c) for p, c in zip(prefixed, ["a red circle", "a blue box"]))
    assert prefixed == prefix_random_words(["a red circle", "a blue box"], 3, seed=1)

    # mem3-rand's control: 3 common words somewhere in the caption, the caption's own words in order around them
    captions = ["a small dog runs across the grass", "two birds on a wire", "a house"] * 20
    placed = insert_random_words(captions, 3, seed=4)
    assert placed == insert_random_words(captions, 3, seed=4) and placed != insert_random_words(captions, 3, seed=5)
    fronts = 0
    for p, c in zip(placed, captions):
        words, body = p.split(), c.split()
        at = next(i for i in range(len(body) + 1) if words[:i] == body[:i] and words[i + 3:] == body[i:])
        fronts += at == 0
    assert 0 < fronts < len(captions)  # a random boundary: sometimes in front, mostly not


def test_eval_trains_a_victim_from_shards(demo_small, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--train", str(demo_small / "train"), "--test", str(demo_small / "test"),
                 "--victim", "tiny-resnet", "--epochs", "3", "--out", str(out), "--device", "cpu"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert len(result["epochs"]) == 3 and len(result["loss_curve"]) == 3
    assert result["loss_curve"][-1] < result["loss_curve"][0]
    for split in ("clean", "prefixed"):
        assert {"i2t_R@10", "t2i_R@10", "i2t_median_rank", "chance_R@10"} <= set(result["final"][split])
    assert (out / "retrieval_curve.png").stat().st_size > 0
