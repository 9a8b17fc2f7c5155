"""The fine-tuning regime's parts: a public stand-in model, any open_clip model as the surrogate,
the fine-tuning victim, and the mechanism itself (error-minimising noise against a frozen
pretrained surrogate)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mempipe.cli import main
from mempipe.data.demo_data import sample_for, write_demo_data
from mempipe.engine import MEMConfig, protect_unit
from mempipe.engine.losses import clip_loss
from mempipe.engine.surrogate import build_model, model_config_sizes
from mempipe.evaluation.public_models import pretrain
from mempipe.evaluation.victim import tokens_for
from mempipe_research.owner_data import OWNER, make_owner_sample
from tests.helpers import private_run

SIZE, CONTEXT = 16, 24   # the test model's sizes (its model-config JSON says so)


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    """A tiny public stand-in, pretrained on 1,024 web pairs in seconds."""
    return pretrain("public-test", str(tmp_path_factory.mktemp("public")), pairs=1024, epochs=4, test_pairs=64)


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    root = tmp_path_factory.mktemp("owner")
    write_demo_data(str(root), train=96, test=48, size=SIZE, seed=5, style=OWNER)
    return root


def test_public_model_is_deterministic_cached_and_loads_through_open_clip(public, tmp_path, monkeypatch):
    from mempipe.evaluation import public_models

    small = dict(pairs=128, epochs=1, test_pairs=32)
    first = pretrain("public-test", str(tmp_path / "a"), **small)
    again = pretrain("public-test", str(tmp_path / "b"), **small)
    assert again["checkpoint_sha256"] == first["checkpoint_sha256"]      # same seed, same bytes

    def no_training(*args, **kwargs):
        raise AssertionError("a cached public model was trained again")

    monkeypatch.setattr(public_models, "train_victim", no_training)
    monkeypatch.setattr(public_models, "corpus", no_training)
    cached = pretrain("public-test", str(tmp_path / "b"), **small)
    assert cached["cached"] and cached["checkpoint_sha256"] == first["checkpoint_sha256"]
    assert len(public["loss_curve"]) == 4 and public["loss_curve"][-1] < public["loss_curve"][0]
    config = json.load(open(public["model_config"]))
    assert {"embed_dim", "vision_cfg", "text_cfg"} <= set(config)
    assert model_config_sizes(public["model_config"]) == {"arch": "public-test", "image_size": SIZE,
                                                          "context_length": CONTEXT}
    model = build_model("public-test", SIZE, CONTEXT, checkpoint=public["checkpoint"],
                        model_config=public["model_config"])
    saved = torch.load(public["checkpoint"], weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in model.clip.state_dict().items())   # the weights, not a fresh model
    with pytest.raises(ValueError, match="built for 16 px"):
        build_model("public-test", 64, CONTEXT, model_config=public["model_config"])


def test_the_web_corpus_never_shows_the_owners_shapes():
    from mempipe.data.photo_data import OWNER_SHAPES, PUBLIC_SHAPES

    assert not set(OWNER_SHAPES) & set(PUBLIC_SHAPES)
    for i in range(60):
        web, owner = sample_for("web", i, 32, 0)[2], make_owner_sample(i, 32, 0)[2]
        assert {o["shape"] for o in web["objects"]} <= set(PUBLIC_SHAPES)
        assert {o["shape"] for o in owner["objects"]} <= set(OWNER_SHAPES)


def _frozen_config(public, method: str, **overrides) -> MEMConfig:
    settings = dict(train_steps=0, outer_iters=4, pgd_steps=5, epsilon=8, alpha=1, batch_size=64, hotflip_iters=1,
                    candidates=4)
    return MEMConfig(method=method, arch="public-test", image_size=SIZE, context_length=CONTEXT,
                     checkpoint=public["checkpoint"], model_config=public["model_config"], surrogate="per-unit",
                     **{**settings, **overrides})


def _loss(model, images: torch.Tensor, noise: torch.Tensor, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        x = (images.short() + noise.short()).clamp(0, 255).float() / 255
        return float(clip_loss(model.encode_image(x), model.encode_text(tokens), model.logit_scale()))


@pytest.mark.parametrize("method, least_drop", [("em", 0.1), ("mem", 0.03)])
def test_error_minimising_noise_lowers_the_frozen_pretrained_surrogates_loss(public, method, least_drop):
    """The mechanism: against the pretrained model it was made for (on pairs of its own domain),
    error-minimising noise lowers the contrastive loss well below what random noise of the same
    epsilon does, and random noise does next to nothing. A flipped PGD sign or a broken projection
    fails this; that the run's surrogate is the checkpoint is checked bit for bit below."""
    from mempipe.evaluation.public_models import corpus

    images, captions = corpus(64, SIZE, 0, first_index=7_000_000)   # held-out pairs, not trained on
    cfg = _frozen_config(public, method, pgd_steps=10)
    result = protect_unit(images, captions, cfg)
    assert int(result.noise.abs().max()) <= cfg.epsilon                     # the L-inf projection
    random_noise = protect_unit(images, captions, cfg.with_overrides(method="random")).noise
    assert int(random_noise.abs().max()) <= cfg.epsilon
    model = build_model("public-test", SIZE, CONTEXT, checkpoint=public["checkpoint"],
                        model_config=public["model_config"]).eval()
    if method == "mem":   # the victim sees the trigger in front of each caption
        from mempipe.engine.text import compose, encode_captions

        body, lengths = encode_captions(captions, CONTEXT - 2)
        tokens = compose(result.trigger_ids, body, lengths, CONTEXT)
    else:
        tokens = tokens_for(captions, CONTEXT)
    protected, control = _loss(model, images, result.noise, tokens), _loss(model, images, random_noise, tokens)
    untouched = _loss(model, images, torch.zeros_like(random_noise), tokens)
    assert abs(control - untouched) < 0.02, (control, untouched)
    assert protected < control - least_drop, (protected, control)


def test_eval_fine_tunes_a_checkpoint_and_reports_zero_shot_gain_and_seeds(public, owner, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", "--train", str(owner / "train"), "--test", str(owner / "test"), "--init", public["checkpoint"],
                 "--model-config", public["model_config"], "--seeds", "2", "--epochs", "1", "--lr", "1e-3",
                 "--out", str(out)]) == 0
    result = json.load(open(out / "metrics.json"))
    first, second = result["runs"]
    assert first["victim"]["init"] == public["checkpoint"] and first["victim"]["image_size"] == SIZE
    assert (first["victim"]["seed"], second["victim"]["seed"]) == (0, 1)
    assert first["zero_shot"] == second["zero_shot"]                     # both start from the same public model
    for run in result["runs"]:
        for split in ("clean", "prefixed"):
            for d in ("i2t", "t2i"):
                assert run["gain_R@10"][split][d] == pytest.approx(
                    run["final"][split][f"{d}_R@10"] - run["zero_shot"][split][f"{d}_R@10"], abs=0.011)
    summary = result["summary"]["gain_R@10"]["clean"]["i2t"]
    assert summary["values"] == [first["gain_R@10"]["clean"]["i2t"], second["gain_R@10"]["clean"]["i2t"]]
    assert summary["sd"] == pytest.approx(float(np.std(summary["values"], ddof=1)), abs=0.011)
    # the zero-shot score is the public model's own: scoring it here gives the same numbers
    from mempipe.evaluation.evaluate import load_eval_data
    from mempipe.evaluation.victim import VictimConfig, embed, retrieval_metrics

    cfg = VictimConfig(arch="public-test", image_size=SIZE, context_length=CONTEXT, init=public["checkpoint"],
                       model_config=public["model_config"])
    _, _, tests, _ = load_eval_data(str(owner / "train"), str(owner / "test"), cfg)
    model = build_model("public-test", SIZE, CONTEXT, public["checkpoint"], model_config=public["model_config"])
    images, captions = tests["clean"]
    assert retrieval_metrics(*embed(model, images, tokens_for(captions, CONTEXT), "cpu")) == first["zero_shot"]["clean"]


def test_finetune_preset_protects_against_the_pretrained_surrogate_as_given(public, owner, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["protect", str(owner / "train"), str(out), "--preset", "finetune", "--no-ray", "--quiet"]) == 2
    assert "give --checkpoint" in capsys.readouterr().err
    argv = ["protect", str(owner / "train"), str(out), "--preset", "finetune", "--model-config", public["model_config"],
            "--checkpoint", public["checkpoint"], "--train-steps", "0", "--outer-iters", "2", "--pgd-steps", "2",
            "--hotflip-iters", "1", "--unit-size", "96", "--no-ray", "--quiet"]
    assert main(argv) == 0
    record = private_run(out)
    assert record["config"]["arch"] == "public-test" and record["config"]["image_size"] == SIZE
    assert record["config"]["lr"] == 1e-5 and record["config"]["candidates"] == 6    # the authors' fine-tune values
    # a pretrained surrogate used as given is named in the record, not uploaded again
    assert record["surrogate"]["checkpoint"] == "as given (not stored)"
    assert not (tmp_path / "out_mempipe_record" / "surrogate.pt").exists()
    from mempipe.engine import MEMConfig
    from mempipe.run.fit import load_fit

    state = load_fit(str(tmp_path / "out_mempipe_record"), MEMConfig(**record["config"]), None)
    given = torch.load(public["checkpoint"], weights_only=True)["state_dict"]
    loaded = state.surrogate.clip.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in given.items())    # the public model, never one from scratch
