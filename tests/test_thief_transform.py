"""The thief's transform in the noise loop, and ensembles of surrogates.

Noise is stored at twice the model's input and the thief trains on random resized crops and
flips (torchvision's own ops, not the engine's, so the check is independent of the code under
test). Noise made with the crop transform in the loop must lower the surrogate's loss on such
crops well below random noise's, and below noise made with the evaluation view alone: if the
transform silently fell out of PGD, the two made noises would be the same and this fails.
"""
from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2 as T

from mempipe.engine import Given, MEMConfig, protect_unit
from mempipe.engine.losses import clip_loss
from mempipe.engine.surrogate import build_model
from mempipe.engine.views import crop_box, resize, thief_view
from mempipe.evaluation.public_models import corpus, pretrain
from mempipe.evaluation.victim import tokens_for

SIZE, CONTEXT, STORED = 16, 24, 32


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    return pretrain("public-test", str(tmp_path_factory.mktemp("public")), pairs=2048, epochs=6, test_pairs=64)


@pytest.fixture(scope="module")
def pairs():
    return corpus(64, STORED, 0, first_index=7_000_000)   # held-out web pairs at twice the model's input


def _config(public, **overrides) -> MEMConfig:
    return MEMConfig(**{**dict(arch="public-test", image_size=SIZE, context_length=CONTEXT, checkpoint=public["checkpoint"],
                               model_config=public["model_config"], surrogate="per-unit", train_steps=0, outer_iters=4,
                               pgd_steps=10, epsilon=8, alpha=1, batch_size=64, noise_size=STORED), **overrides})


def _thief_loss(model, images, captions, noise, draws: int = 8) -> float:
    """The surrogate's mean loss over torchvision random-resized-crop + flip views of the protected images."""
    torch.manual_seed(123)
    thief = T.Compose([T.RandomResizedCrop(SIZE, scale=(0.5, 1.0), antialias=True), T.RandomHorizontalFlip()])
    protected = (images.short() + noise.short()).clamp(0, 255).to(torch.uint8)
    tokens = tokens_for(captions, CONTEXT)
    losses = []
    with torch.no_grad():
        for _ in range(draws):
            views = torch.stack([thief(image) for image in protected]).float() / 255
            losses.append(float(clip_loss(model.encode_image(views), model.encode_text(tokens), model.logit_scale())))
    return sum(losses) / len(losses)


def test_noise_made_through_the_thiefs_crop_survives_it(public, pairs):
    images, captions = pairs
    cfg = _config(public)
    model = build_model("public-test", SIZE, CONTEXT, checkpoint=public["checkpoint"],
                        model_config=public["model_config"]).eval()
    random_noise = protect_unit(images, captions, cfg.with_overrides(method="random")).noise
    plain = protect_unit(images, captions, cfg.with_overrides(method="em")).noise
    cropped = protect_unit(images, captions, cfg.with_overrides(method="em", transform="crop")).noise
    assert cropped.shape == images.shape and int(cropped.abs().max()) <= cfg.epsilon
    loss = {name: _thief_loss(model, images, captions, noise)
            for name, noise in (("random", random_noise), ("plain", plain), ("crop", cropped))}
    assert loss["crop"] < loss["random"] - 0.15, loss
    assert loss["crop"] < loss["plain"] - 0.03, loss
    assert not torch.equal(plain, cropped)


def test_an_ensemble_member_changes_the_noise_and_sizes_differ_per_member(public, pairs, tmp_path):
    """A second surrogate at another input size (24 px here) is seen through its own view and pulls
    the noise: with it the noise differs from the first surrogate's alone."""
    import json

    images, captions = pairs
    config = json.load(open(public["model_config"]))
    config["vision_cfg"]["image_size"] = 24
    other_config = tmp_path / "public-test-24.json"
    other_config.write_text(json.dumps(config))
    other = build_model("public-test-24", 24, CONTEXT, model_config=str(other_config), seed=1).eval()
    assert other.input_size == 24
    cfg = _config(public, method="em", outer_iters=1, pgd_steps=3)
    alone = protect_unit(images[:16], captions[:16], cfg).noise
    together = protect_unit(images[:16], captions[:16], cfg, given=Given(ensemble=[other])).noise
    worst = protect_unit(images[:16], captions[:16], cfg.with_overrides(ensemble_reduce="max"),
                         given=Given(ensemble=[other])).noise
    assert not torch.equal(alone, together) and int(together.abs().max()) <= cfg.epsilon
    assert worst.shape == together.shape


def test_views_are_differentiable_bounded_and_follow_torchvisions_box_rule():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        top, left, h, w = crop_box(32, 32, 0.5, generator)
        assert 0 <= top <= 32 - h and 0 <= left <= 32 - w and h * w >= 0.5 * 32 * 32 * 0.7   # area share, aspect in [3/4, 4/3]
        assert 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    views = thief_view(x, 16, torch.Generator().manual_seed(1), crop_scale=0.5, jpeg=1.0, gray=0.5)
    assert views.shape == (4, 3, 16, 16) and 0 <= float(views.min()) and float(views.max()) <= 1
    views.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert resize(x.detach(), 32) is not None and resize(x.detach(), 16).shape[-1] == 16


def test_stored_size_is_checked():
    with pytest.raises(ValueError, match="below the model's input"):
        MEMConfig(image_size=64, noise_size=32)
    with pytest.raises(ValueError, match="32 x 32"):
        protect_unit(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), ["a", "b"],
                     MEMConfig(method="random", image_size=16, noise_size=32))
