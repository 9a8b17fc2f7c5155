"""Surrogates named as open_clip names them: local-dir: folders (written here, as open_clip writes
them), ensembles through ``mempipe protect``, and the offline failure of a tag that needs a download."""
from __future__ import annotations

import json
import time

import pytest
import torch

from mempipe.cli import main
from mempipe.data.demo_data import write_demo_data
from mempipe.engine import names
from mempipe.engine.surrogate import build_model, build_named
from mempipe.evaluation.public_models import pretrain, write_local_dir
from mempipe_research.owner_data import OWNER
from tests.helpers import private_run

SIZE, CONTEXT = 16, 24


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    return pretrain("public-test", str(tmp_path_factory.mktemp("public")), pairs=256, epochs=1, test_pairs=32)


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    root = tmp_path_factory.mktemp("owner")
    write_demo_data(str(root), train=48, test=16, size=2 * SIZE, seed=5, style=OWNER)
    return root


def test_a_local_dir_loads_the_weights_sizes_and_normalisation_it_names(public, tmp_path):
    name = write_local_dir(public, tmp_path / "m", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert names.is_named(name) and names.sizes(name) == {"image_size": SIZE, "context_length": CONTEXT}
    model = build_named(name)
    given = torch.load(public["checkpoint"], weights_only=True)["state_dict"]
    assert all(torch.equal(model.clip.state_dict()[k], v) for k, v in given.items())
    assert model.mean.flatten().tolist() == [0.5] * 3 and model.std.flatten().tolist() == [0.25] * 3
    assert build_model(name, SIZE, CONTEXT).input_size == SIZE          # the one factory path takes names too
    with pytest.raises(ValueError, match="built for 16 px"):
        build_model(name, 32, CONTEXT)
    with pytest.raises(ValueError, match="no open_clip_config.json"):
        build_named(f"local-dir:{tmp_path}")


def test_a_tag_that_needs_a_download_fails_at_once_offline(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(names, "HUB_HOST", ("127.0.0.1", 9))        # a closed port: no hub here
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))               # and nothing cached
    started = time.time()
    code = main(["protect", str(tmp_path / "in"), str(tmp_path / "out"), "--surrogate", "RN50:openai", "--no-ray"])
    assert code == 2 and time.time() - started < 10
    err = capsys.readouterr().err
    assert "RN50:openai needs a download" in err and "local-dir:" in err
    with pytest.raises(ValueError, match="no pretrained tag 'nope'"):
        names.check_available("RN50:nope")


def test_protect_with_an_ensemble_of_local_dirs_and_the_crop_in_the_loop(public, owner, tmp_path):
    first = write_local_dir(public, tmp_path / "a")
    second = write_local_dir(public, tmp_path / "b", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = tmp_path / "out"
    argv = ["protect", str(owner / "train"), str(out), "--preset", "finetune", "--surrogate", first,
            "--surrogate", second, "--method", "em", "--train-steps", "0", "--outer-iters", "1", "--pgd-steps", "2",
            "--noise-size", str(2 * SIZE), "--transform", "crop", "--no-ray", "--quiet"]
    assert main(argv) == 0
    config = private_run(out)["config"]
    assert config["arch"] == first and config["ensemble"] == second
    assert (config["image_size"], config["noise_size"], config["transform"]) == (SIZE, 2 * SIZE, "crop")
    stats = json.load(open(next(out.glob("*_stats.json"))))
    assert stats["successes"] == 48
    # the mode words still set the surrogate mode
    assert main(argv[:-2] + ["--surrogate", "per-unit", "--no-ray", "--quiet", "--new-run"]) == 0


def test_eval_compare_fine_tunes_on_clean_random_noise_and_protected_copies(public, owner, tmp_path, capsys):
    """The check a user runs on their own data: three fine-tunes of the named model, one table."""
    name = write_local_dir(public, tmp_path / "m")
    protected = tmp_path / "protected"
    assert main(["protect", str(owner / "train"), str(protected), "--surrogate", name, "--outer-iters", "1",
                 "--no-ray", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", "--train", str(protected), "--compare", str(owner / "train"), "--test", str(owner / "test"),
                 "--init", name, "--epochs", "2", "--lr", "1e-3", "--out", str(tmp_path / "effect")]) == 0
    printed = capsys.readouterr().out
    result = json.load(open(tmp_path / "effect" / "compare.json"))
    assert list(result["rows"]) == ["clean", "random noise", "protected"] and result["epsilon"] == 8
    zero = {json.dumps(row["zero_shot"], sort_keys=True) for row in result["rows"].values()}
    assert len(zero) == 1                                   # one starting model for the three fine-tunes
    finals = {json.dumps(row["final"], sort_keys=True) for row in result["rows"].values()}
    assert len(finals) == 3                                 # three different training sets
    assert all(name in printed for name in result["rows"]) and (tmp_path / "effect" / "compare.png").exists()
    assert main(["inspect", str(protected), "--original", str(owner / "train"), "--grid", str(tmp_path / "grid.png"),
                 "--effect", str(tmp_path / "effect" / "compare.json")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_a_self_ensemble_is_checkpoints_along_a_fine_tune_passed_as_more_surrogates(public, owner, tmp_path):
    name = write_local_dir(public, tmp_path / "m")
    assert main(["eval", "--train", str(owner / "train"), "--test", str(owner / "test"), "--init", name,
                 "--epochs", "3", "--lr", "1e-3", "--save-checkpoints", "2", "--out", str(tmp_path / "ft")]) == 0
    folders = sorted(p.name for p in (tmp_path / "ft" / "checkpoints").iterdir())
    assert folders == ["epoch_2", "epoch_3"]                       # evenly spread, the last one included
    given = build_named(name).clip.state_dict()
    members = [f"local-dir:{tmp_path / 'ft' / 'checkpoints' / f}" for f in folders]
    for member in members:                                           # each loads as open_clip loads a hub model
        tuned = build_named(member).clip.state_dict()
        assert any(not torch.equal(tuned[k], given[k]) for k in given)   # moved by the fine-tune
    out = tmp_path / "out"
    assert main(["protect", str(owner / "train"), str(out), "--surrogate", name, "--surrogate", members[0],
                 "--surrogate", members[1], "--outer-iters", "1", "--no-ray", "--quiet"]) == 0
    assert private_run(out)["config"]["ensemble"] == ",".join(members)
