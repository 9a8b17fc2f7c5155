"""The fine-tuning regime's parts: a public stand-in model, any open_clip model as the surrogate,
the fine-tuning victim, and the mechanism itself (error-minimising noise against a frozen
pretrained surrogate)."""
from __future__ import annotations

import json
import time

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
from tests.helpers import private_run

SIZE, CONTEXT = 16, 24   # the test model's sizes (its model-config JSON says so)


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    """A tiny public stand-in, pretrained on 1,024 web pairs in seconds."""
    return pretrain("public-test", str(tmp_path_factory.mktemp("public")), pairs=1024, epochs=4, test_pairs=64)


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    root = tmp_path_factory.mktemp("owner")
    write_demo_data(str(root), train=96, test=48, size=SIZE, seed=5, style="owner")
    return root


def test_public_model_is_deterministic_cached_and_loads_through_open_clip(public, tmp_path):
    small = dict(pairs=128, epochs=1, test_pairs=32)
    first = pretrain("public-test", str(tmp_path / "a"), **small)
    again = pretrain("public-test", str(tmp_path / "b"), **small)
    assert again["checkpoint_sha256"] == first["checkpoint_sha256"]      # same seed, same bytes
    started = time.time()
    cached = pretrain("public-test", str(tmp_path / "b"), **small)
    assert cached["cached"] and time.time() - started < 1.0
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
        web, owner = sample_for("web", i, 32, 0)[2], sample_for("owner", i, 32, 0)[2]
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


def test_calibration_freezes_by_clean_and_control_alone_and_the_two_sd_rule():
    from bench.finetune_regime import AFTER_FREEZE, FIRST_BUILD, STRENGTHS, calibration_run, differs, judge, pick

    weak, middle, strong = list(STRENGTHS)

    def run(strength, condition, seed, i2t, t2i):
        gain = {"clean": {"i2t": i2t, "t2i": t2i}, "prefixed": {"i2t": i2t, "t2i": t2i}}
        return {"model": "A", "strength": strength, "condition": condition, "seed": seed, "gain": gain,
                "zero_shot": {"clean": {"i2t_R@10": 4.0, "t2i_R@10": 3.0}}, "loss_curve": [1.0]}

    late = next(iter(AFTER_FREEZE))
    runs = []
    for seed in range(3):
        runs += [run(late, "clean", seed, 40, 40), run(late, "random-words", seed, 39, 39),    # after the freeze
                 run(weak, "clean", seed, 8 + seed, 9), run(weak, "random-words", seed, 7, 8),         # too small
                 run(middle, "clean", seed, 20 + seed, 18), run(middle, "random-words", seed, 16, 15),  # both valid
                 run(strong, "clean", seed, 30 + seed, 28), run(strong, "random-words", seed, 3, 2)]    # control lost
    table = judge(runs)["A"]
    assert table[late]["after_freeze"] and table[late]["valid_trigger"]
    assert not table[weak]["valid_image_noise"]
    assert table[middle]["valid_trigger"] and table[strong]["valid_image_noise"]
    assert not table[strong]["valid_trigger"]
    frozen = pick({"A": table})
    assert frozen["image_noise"]["strength"] == strong      # the largest clean gain among the valid
    assert frozen["trigger"]["strength"] == middle          # a later, better strength never moves the freeze
    assert pick({"A": table}, after_freeze=True)["trigger"]["strength"] == late   # the second freeze: its own pick
    # a method row reuses the calibration's run of the same model, strength, condition, seed and build of the
    # public models (runs without a build are on the first); never for a method
    assert calibration_run(runs, "random-words", "A", middle, 1, FIRST_BUILD)["gain"]["clean"]["i2t"] == 16
    assert calibration_run(runs, "clean", "A", middle, 2, FIRST_BUILD)["gain"]["clean"]["i2t"] == 22
    assert calibration_run(runs, "clean", "A", middle, 2, "rebuilt") is None
    assert calibration_run(runs + [{**run(middle, "clean", 2, 25, 18), "build": "rebuilt"}], "clean", "A", middle, 2,
                           "rebuilt")["gain"]["clean"]["i2t"] == 25
    assert (calibration_run(runs, "em", "A", middle, 1, FIRST_BUILD) is None
            and calibration_run(runs, "clean", "B", middle, 1, FIRST_BUILD) is None)
    assert differs({"mean": 10, "sd": 1}, {"mean": 5, "sd": 1}) is True
    assert differs({"mean": 10, "sd": 3}, {"mean": 5, "sd": 3}) is False       # 5 < 2 x 3
    assert differs({"mean": 10, "sd": None}, {"mean": 5, "sd": 1}) is None     # one seed: no call


def test_the_report_reads_each_sets_protect_record_from_the_row_files(tmp_path):
    """The work folder is a cache that a new checkout lacks: the report must come from the row files
    alone, with the later file's record winning, and refuse rows whose set has no record."""
    from bench.finetune_regime import report

    def row(name, seed, gain):
        g = {"i2t": gain, "t2i": gain}
        return {"row": name, "base_row": name, "victim": "A", "seed": seed, "strength": "lr1e-3", "what": name,
                "gain": {"clean": g, "prefixed": g}, "loss_curve": [1.0]}

    meta = {"frozen": {"image_noise": {"strength": "lr1e-3", "valid": True},
                       "trigger": {"strength": "lr1e-3", "valid": False}}}
    first, second, alone = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "records.json"
    first.write_text(json.dumps({"meta": meta, "rows": [row("clean", s, 20 + s) for s in range(3)]
                                 + [row("em", s, 1 + s) for s in range(3)], "protection": {"em": {"psnr": 1.0}}}))
    second.write_text(json.dumps({"meta": meta, "rows": [row("random", s, 21 - s) for s in range(3)],
                                  "protection": {"random": {"psnr": 3.0}}}))
    alone.write_text(json.dumps({"rows": [], "protection": {"em": {"psnr": 2.0}, "uc": {"psnr": 4.0}}}))
    body = report([first, second, alone])
    assert body["protection"] == {"em": {"psnr": 2.0}, "random": {"psnr": 3.0}, "uc": {"psnr": 4.0}}
    assert body["table"]["A"]["em"]["share_of_clean"]["clean"]["i2t"] == round(2 / 21, 3)
    assert body["table"]["A"]["em"]["differs_from_control"]["clean"]["i2t"] is True
    unrecorded = tmp_path / "c.json"
    unrecorded.write_text(json.dumps({"meta": meta, "rows": [row("random", 0, 20)]}))
    with pytest.raises(SystemExit, match="random"):
        report([first, unrecorded])
