import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from mempipe.cli import main
from mempipe.io.images import decode_rgb
from mempipe.io.shards import iter_shard
from mempipe.engine.text import tokenizer
from mempipe_research.testing import fast_config as write_fast_config

from helpers import image_bytes, make_tar, sample_members, private_meta, private_run

FAST = ["--preset", "cpu-tiny", "--quiet", "--seed", "1", "--no-ray"]


@pytest.fixture(scope="module")
def fast_config(tmp_path_factory):
    return write_fast_config(tmp_path_factory.mktemp("cfg"))


def test_protect_end_to_end_on_300_demo_samples_with_bad_ones(demo_small, tmp_path, fast_config, capsys):
    inp = tmp_path / "in"
    shutil.copytree(demo_small / "train", inp)
    make_tar(inp / "00001.tar", sample_members("bad0", img=b"garbage") + sample_members("gray0", img=image_bytes("L", (40, 30)))
             + [("nocap.png", image_bytes())])
    out = tmp_path / "out"
    assert main(["protect", str(inp), str(out), *FAST, "--config", fast_config]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["samples_protected"] == 301 and summary["samples_failed"] == 2

    originals = {s.key: s for s in iter_shard(str(inp / "00000.tar"))}
    protected = list(iter_shard(str(out / "00000.tar")))
    assert {s.key for s in protected} == set(originals)
    tok = tokenizer()
    private = private_meta(out)
    for s in protected:
        # published: nothing that helps undo the protection; the rest is in the private record
        assert set(s.meta["mempipe"]) == {"version", "method", "epsilon", "run_id"}
        m = private[("00000", s.key)]
        assert m["run_id"] == s.meta["mempipe"]["run_id"]
        trigger = m["trigger"]
        assert trigger not in json.dumps(s.meta["mempipe"])
        assert s.caption == trigger + " " + originals[s.key].caption
        assert len(trigger.split()) == 3 and tok.encode(s.caption)[:3] == tok.encode(trigger)
        assert s.image_ext == "png" and m["max_delta"] <= 8 and m["method"] == "mem"
        a, _ = decode_rgb(s.image)
        b, _ = decode_rgb(originals[s.key].image)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 8 == m["epsilon"]
    # every input key is protected or recorded as failed
    rows = pq.read_table(out / "00001.parquet").to_pylist()
    status = {r["key"]: (r["status"], r["error_message"]) for r in rows}
    assert status["gray0"][0] == "success" and status["bad0"][0] == "failed" and status["nocap"][0] == "failed"
    assert "cannot decode" in status["bad0"][1] and "missing caption" in status["nocap"][1]
    public = json.loads((out / "mempipe_run.json").read_text())
    assert public["samples_protected"] == 301 and "units" not in public and "config" not in public
    record = private_run(out)
    assert record["samples_protected"] == 301 and record["units"][0]["log"]

    # a finished run, started again, says so, does nothing and leaves the run records as they were
    before = {p: p.read_bytes() for p in [out / "00000.tar", out / "mempipe_run.json",
                                          out.parent / "out_mempipe_record" / "run.json"]}
    assert main(["protect", str(inp), str(out), *FAST, "--config", fast_config, "--epsilon", "4"]) == 0
    assert "2 of 2 shards already done, skipped" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.parametrize("method", ["random", "em", "uc", "conv", "pattern"])
def test_protect_baselines_and_formats(demo_small, tmp_path, fast_config, method):
    out = tmp_path / method
    fmt = {"random": "jpeg:90", "em": "webp", "uc": "keep", "conv": "png", "pattern": "png"}[method]
    # conv and pattern: one filter or pattern per cluster
    scope = ["--noise-scope", "cluster"] if method in ("conv", "pattern") else []
    assert main(["protect", str(demo_small / "test"), str(out), *FAST, "--config", fast_config, "--method", method,
                 "--image-format", fmt, "--clusters", "3", *scope]) == 0
    private = private_meta(out)
    published = list(iter_shard(str(out / "00000.tar")))
    assert len(published) == 60 and all(s.meta["mempipe"]["method"] == method for s in published)
    full = [private[("00000", s.key)] for s in published]      # the owner's record of each sample
    assert all(m["trigger"] is None for m in full)
    assert {s.image_ext for s in published} == {"random": {"jpg"}, "em": {"webp"}, "uc": {"png"}, "conv": {"png"},
                                                 "pattern": {"png"}}[method]
    if method != "random":
        assert max(m["max_delta"] for m in full) <= 8   # conv too: at the default epsilon the blur is clamped
    if method in ("uc", "conv", "pattern"):
        assert {m["cluster"] for m in full} <= {0, 1, 2}


@pytest.mark.parametrize("argv,message", [
    (["protect", "IN", "OUT", "--epsilon", "40"], "1..32"),
    (["protect", "IN", "IN"], "must not be the input"),
    (["protect", "IN", "IN/sub"], "inside the input"),
    (["protect", "IN/missing", "OUT"], "not found"),
    (["protect", "IN", "OUT", "--preset", "huge"], "invalid choice: 'huge'"),
    (["protect", "IN", "OUT", "--image-format", "gif"], "unknown image format"),
])
def test_clear_errors_for_bad_arguments(demo_small, tmp_path, capsys, argv, message):
    argv = [a.replace("IN", str(demo_small / "test")).replace("OUT", str(tmp_path / "o")) for a in argv]
    with pytest.raises(SystemExit) if "huge" in argv else _nullcontext():   # argparse refuses a choice itself
        assert main(argv) == 2
    assert message in capsys.readouterr().err


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def test_every_subcommand_has_help(capsys):
    for cmd in ("demo-data", "protect", "eval", "inspect"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage" in capsys.readouterr().out


def test_a_window_below_one_is_refused(demo_small, tmp_path, capsys):
    assert main(["protect", str(demo_small / "test"), str(tmp_path / "o"), "--window", "0", "--no-ray"]) == 2
    assert "--window must be at least 1" in capsys.readouterr().err


def test_a_small_input_runs_in_this_process_unless_a_ray_setting_is_given(demo_small, tmp_path, capsys, monkeypatch):
    from mempipe import cli

    started = []
    monkeypatch.setattr("mempipe.run.ray_pool.init_ray", lambda *a, **k: started.append(1))
    argv = ["protect", str(demo_small / "test"), str(tmp_path / "o"), "--method", "random"]
    assert main(argv) == 0                                   # one shard: no Ray start
    assert not started and private_run(tmp_path / "o")["engine"] == "local"
    assert "without starting Ray" in capsys.readouterr().err
    args = cli.build_parser().parse_args(argv + ["--num-actors", "1"])
    assert not cli.small_run(args, {})                       # a Ray setting asks for Ray
    monkeypatch.setattr(cli, "SMALL_RUN_SHARDS", 0)
    assert not cli.small_run(cli.build_parser().parse_args(argv), {})   # more shards than a small run


def test_random_trigger_placement_through_the_cli(demo_small, tmp_path, fast_config, capsys):
    """Beyond the paper: the trigger lands at the recorded word boundary of the written caption,
    so deleting the first k words leaves it in most captions."""
    out = tmp_path / "out"
    assert main(["protect", str(demo_small / "train"), str(out), *FAST, "--config", fast_config,
                 "--trigger-placement", "random", "--trigger-vocab", "common", "--pgd-objective", "joint",
                 "--noise-scope", "cluster+sample", "--cluster-features", "text", "--trigger-scope", "sample",
                 "--provenance", "full"]) == 0
    originals = {s.key: s.caption for s in iter_shard(str(demo_small / "train" / "00000.tar"))}
    protected = list(iter_shard(str(out / "00000.tar")))
    assert {s.key for s in protected} == set(originals)
    survives_strip = 0
    for s in protected:
        m = s.meta["mempipe"]
        words, trigger = originals[s.key].split(), m["trigger"].split()
        w = m["trigger_word_index"]
        assert s.caption.split() == words[:w] + trigger + words[w:]
        assert m["noise_scope"] == "cluster+sample" and m["max_delta"] <= 8 and m["cluster"] is not None
        survives_strip += w >= 3
    assert survives_strip > len(protected) // 2
    record = json.loads((out / "mempipe_run.json").read_text())
    assert record["config"]["pgd_objective"] == "joint" and record["config"]["trigger_placement"] == "random"


def test_shared_surrogate_trained_once_saved_and_reused(demo_small, tmp_path, fast_config):
    """The default (--surrogate shared): one surrogate per run, an open_clip checkpoint in the private
    record, every unit starts from it, and a later run on the same output loads it instead of training."""
    import torch

    from mempipe.engine.surrogate import build_model

    inp = tmp_path / "in"
    shutil.copytree(demo_small / "train", inp)
    out = tmp_path / "out"
    argv = ["protect", str(inp), str(out), *FAST, "--config", fast_config, "--unit-size", "100"]
    assert main(argv) == 0
    record = private_run(out)
    assert record["surrogate"]["mode"] == "shared" and record["surrogate"]["trained_this_run"]
    assert record["surrogate"]["sample"] == 100 and len(record["units"]) == 3      # 300 samples, units of 100
    for unit in record["units"]:   # a frozen shared surrogate: no surrogate step inside a unit
        assert all(entry["surrogate_loss"] != entry["surrogate_loss"] for entry in unit["log"])   # NaN: no steps
    checkpoint = record["surrogate"]["checkpoint"]
    assert checkpoint == str(out) + "_mempipe_record/surrogate.pt"
    model = build_model("tiny-vit", 64, 32, checkpoint=checkpoint)      # loads as a local open_clip checkpoint
    assert torch.isfinite(next(model.parameters())).all()
    stored = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())   # half the bytes


    # a new shard arrives: the next run protects it against the same surrogate, without training one
    (inp / "00001.tar").write_bytes((demo_small / "test" / "00000.tar").read_bytes())
    before = (tmp_path / "out_mempipe_record" / "surrogate.pt").read_bytes()
    assert main(argv) == 0
    second = private_run(out)
    assert second["shards_written"] == 1 and second["surrogate"]["trained_this_run"] is False
    assert (tmp_path / "out_mempipe_record" / "surrogate.pt").read_bytes() == before
    assert len(list(iter_shard(str(out / "00001.tar")))) == 60


def test_version_and_an_unknown_defense_is_refused(tmp_path, capsys):
    from mempipe import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"mempipe {__version__}"
    assert main(["eval", "--train", str(tmp_path), "--test", str(tmp_path), "--defense", "blur",
                 "--out", str(tmp_path / "e")]) == 2
    assert "unknown --defense 'blur'" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_every_engine_setting_is_an_option_and_a_config_key_with_the_same_bounds(tmp_path):
    from mempipe.cli import build_parser, engine_config
    from mempipe.engine.config import MEMConfig

    # an open_clip model config whose name and sizes agree with the settings below (the file sets them)
    model_config = tmp_path / "tiny-resnet.json"
    model_config.write_text(json.dumps({"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1],
                                                                        "width": 16}, "text_cfg": {"context_length": 40}}))
    changed = {"method": "uc", "arch": "tiny-resnet", "checkpoint": "model.pt", "model_config": str(model_config),
               "image_size": 32, "context_length": 40,
               "epsilon": 6, "alpha": 2, "pgd_steps": 3, "outer_iters": 4, "train_steps": 7, "hotflip_iters": 1,
               "candidates": 5, "trigger_len": 2, "trigger_scope": "global", "noise_scope": "cluster", "clusters": 7,
               "cluster_features": "text", "cluster_share": 0.25, "trigger_placement": "random",
               "trigger_vocab": "common", "pgd_objective": "trigger", "conv_kernel": 5, "conv_blur": 0.1,
               "pattern_grid": 8, "pattern_seed": 4,
               "batch_size": 16, "lr": 0.001, "weight_decay": 0.2, "unit_size": 99, "candidate_chunk": 2,
               "pgd_batch_size": 8, "precision": "bf16", "compile": True, "surrogate": "per-unit",
               "unit_train_steps": 3, "seed": 9, "noise_size": 64, "transform": "crop", "crop_scale": 0.6,
               "transform_jpeg": 0.1, "transform_gray": 0.2, "ensemble": "", "ensemble_reduce": "max"}
    names = [name for name, *_ in MEMConfig.field_specs()]
    assert sorted(names) == sorted(changed)  # a new setting must be added here, and so reaches both paths
    argv = ["protect", "in", "out"]
    for name, value in changed.items():
        if name == "ensemble":   # named models through --surrogate (tests/test_surrogate_names.py)
            continue
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    from_cli = engine_config(build_parser().parse_args(argv))
    config = tmp_path / "c.yaml"
    config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in changed.items()))
    from_file = engine_config(build_parser().parse_args(["protect", "in", "out", "--config", str(config)]))
    assert from_cli.to_dict() == from_file.to_dict() == {**from_cli.to_dict(), **changed}
    for bad, message in (({"epsilon": 40}, "1..32"), ({"cluster_share": 1.5}, "cluster_share"),
                         ({"alpha": 9}, "alpha")):
        (name, value), = bad.items()
        with pytest.raises(ValueError, match=message):
            engine_config(build_parser().parse_args(["protect", "in", "out", "--" + name.replace("_", "-"), str(value)]))
        config.write_text(f"{name}: {value}\n")
        with pytest.raises(ValueError, match=message):
            engine_config(build_parser().parse_args(["protect", "in", "out", "--config", str(config)]))
    conv = engine_config(build_parser().parse_args(["protect", "in", "out", "--method", "conv", "--epsilon", "100"]))
    assert conv.epsilon == 100   # conv's own bound, in one place
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"embed_dim": 8, "vision_cfg": {"image_size": 16}, "text_cfg": {"context_length": 24}}))
    cfg = engine_config(build_parser().parse_args(["protect", "in", "out", "--model-config", str(mine), "--image-size", "64"]))
    assert (cfg.arch, cfg.image_size, cfg.context_length) == ("mine", 16, 24)   # read from the model's own file


def test_inspect_warns_and_fails_on_shards_that_are_not_mempipe_output(demo_small, capsys):
    assert main(["inspect", str(demo_small / "test")]) == 1
    err = capsys.readouterr().err
    assert "not written by mempipe protect" in err and "0 protected samples" in err
