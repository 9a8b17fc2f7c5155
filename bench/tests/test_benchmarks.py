"""The prepared GPU check must run before a GPU session spends its minutes on it: smoke it on the CPU."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_end_to_end_on_a_tiny_surrogate(tmp_path):
    out = tmp_path / "gpu_check.json"
    tiny = {"arch": "tiny-vit", "image_size": 64, "context_length": 32, "batch_size": 8}
    subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--unit", "16", "--train-steps", "2",
                    "--small", "8", "--variants", "paper,paper+big-batches", "--overrides", json.dumps(tiny),
                    "--default-overrides", json.dumps(tiny), "--ensemble-arch", "tiny-resnet",
                    "--out", str(out)], cwd=ROOT, check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    single, ensemble = result["default_path"]["single"], result["default_path"]["ensemble"]
    assert single["surrogates"] == ["tiny-vit"] and ensemble["surrogates"] == ["tiny-vit", "tiny-resnet"]
    assert single["pgd_loss"][1] < single["pgd_loss"][0]          # error-minimising: the round lowers the loss
    assert ensemble["pgd_round_s"] > 0 and single["samples_per_s"] > 0
    assert set(result["variants"]) == {"paper", "paper+big-batches"}
    for run in result["variants"].values():
        assert min(run["train_s"], run["hotflip_s"], run["pgd_s"]) > 0
        small, big = run["extrapolated"]
        assert (small["unit"], big["unit"]) == (16, 64)
        # surrogate steps are fixed per round, so a bigger unit is cheaper per sample
        assert big["samples_per_s"] > small["samples_per_s"] > 0
    assert result["variants"]["paper+big-batches"]["overrides"] == {"pgd_batch_size": 512, "candidate_chunk": 16}
    assert {run["precision"] for run in result["variants"].values()} == {"bf16"}   # the variants time bf16
    # bf16 autocast runs on the CPU too: the two precisions differ (bf16 really computed), a little
    check = result["precision_check"]
    assert check["fp32_pgd_loss"] != check["bf16_pgd_loss"]
    assert 0 < check["relative_pgd_loss_difference"] < check["tolerance"]


def test_reproduce_paper_end_to_end_on_a_fake_flickr8k(tmp_path):
    """ingest -> protect (MEM-3, MEM-5, EM, random) + random-words -> victims -> table, tiny models on a CPU."""
    from mempipe.data.photo_data import make_photo_sample
    from PIL import Image

    root = tmp_path / "flickr8k"
    (root / "Images").mkdir(parents=True)
    lines = ["image,caption"]
    for i in range(50):
        pixels, caption, _ = make_photo_sample(i, 80, seed=5, difficulty=0.2)
        Image.fromarray(pixels).save(root / "Images" / f"{i:04d}.jpg")
        lines += [f"{i:04d}.jpg,{caption}", f"{i:04d}.jpg,{caption}, seen again"]
    (root / "captions.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "reproduce.json"
    subprocess.run([sys.executable, "bench/reproduce_paper.py", "--dataset", "flickr8k", "--root", str(root), "--tiny",
                    "--device", "cpu", "--test-images", "25", "--epochs", "2", "--work", str(tmp_path / "work"),
                    "--out", str(out)], cwd=ROOT, check=True, capture_output=True, timeout=900)
    result = json.loads(out.read_text())
    assert list(result["rows"]) == ["clean", "random-words", "random", "em", "mem3", "mem5"]
    assert result["meta"]["ingest"]["train"]["samples"] == 50 and result["meta"]["ingest"]["test"]["samples"] == 25
    recalls = []
    for row in result["rows"].values():
        m = row["clean"]
        assert row["n_train"] == 50 and m["chance_R@10"] == 40.0   # 25 test images: R@10 is not 100 by itself
        for d in ("i2t", "t2i"):
            assert 0 <= m[f"{d}_R@1"] <= m[f"{d}_R@5"] <= m[f"{d}_R@10"] <= 100
            assert 1 <= m[f"{d}_median_rank"] <= 25
            # half the queries rank within the median: R@k is at least 50 % from k at or above it
            assert m[f"{d}_R@10"] >= 50 or m[f"{d}_median_rank"] > 10
            recalls.append(m[f"{d}_R@10"])
    assert len(set(recalls)) > 1   # six victims, two directions: not one constant
    assert {f"protect {m}" for m in ("random", "em", "mem3", "mem5")} <= set(result["seconds"])
    assert result["protection"]["mem3"]["samples_protected"] == 50
    table = out.with_suffix(".md").read_text()
    assert "| mem5 |" in table and "tiny smoke" in table


def test_random_words_control_draws_new_words_for_every_shard(tmp_path):
    """The control is 3 random words per caption: two shards with the same captions must not get
    the same prefixes (a per-shard reseed once made each triple repeat in every shard)."""
    import shutil

    from mempipe_research.controls import derive, random_words_captions

    from mempipe.io.shards import iter_shard

    from mempipe.data.demo_data import write_split

    src = tmp_path / "src"
    write_split(str(tmp_path / "one"), 300, 32, seed=3, first_index=0, per_shard=300)
    src.mkdir()
    for name in ("00000", "00001"):   # the same 300 samples twice
        shutil.copy(tmp_path / "one" / "00000.tar", src / f"{name}.tar")
    out = derive("random-words", str(src), str(src), tmp_path / "rw", random_words_captions(0))
    first, second = ([s.caption for s in iter_shard(f"{out}/{n}.tar")] for n in ("00000", "00001"))
    originals = [s.caption for s in iter_shard(str(src / "00000.tar"))]
    assert len(first) == len(second) == len(originals) == 300
    assert all(a.endswith(" " + c) and b.endswith(" " + c) for a, b, c in zip(first, second, originals))
    prefixes = [c[: len(c) - len(o)] for c, o in zip(first + second, originals + originals)]
    assert len(set(prefixes)) > 0.95 * len(prefixes)


def test_group_control_keeps_each_trigger_group_and_draws_it_new_words():
    """The shared-trigger control: captions that shared a trigger share the new words (in any shard),
    different triggers get different words, and the caption after the trigger is untouched."""
    from mempipe_research.controls import group_random_words_captions

    edit = group_random_words_captions(seed=0)
    first = edit(["aa bb cc a dog", "dd ee ff two cats", "aa bb cc one bird"], 0)
    second = edit(["dd ee ff a fish", "aa bb cc a tree"], 1)
    prefix = [" ".join(c.split()[:3]) for c in first + second]
    assert prefix[0] == prefix[2] == prefix[4] and prefix[1] == prefix[3] and prefix[0] != prefix[1]
    assert not {"aa bb cc", "dd ee ff"} & set(prefix)
    assert [c.split()[3:] for c in first + second] == [s.split() for s in
                                                       ("a dog", "two cats", "one bird", "a fish", "a tree")]
    # the global trigger's control: one triple, the same in front of every caption of every shard
    from mempipe_research.controls import global_random_words_captions
    glob = global_random_words_captions(seed=0)
    fronts = {" ".join(c.split()[:3]) for c in glob(["a dog", "two cats"], 0) + glob(["a fish"], 5)}
    assert len(fronts) == 1 and glob(["a dog"], 0)[0].endswith(" a dog")


def test_goal_rows_measure_distance_to_twice_chance_and_margin_removed():
    from mempipe_research.report import goal_rows, matched_control

    def row(name, victim, clean, prefixed):
        final = {s: {"i2t_R@10": v[0], "t2i_R@10": v[1], "chance_R@10": 2.0}
                 for s, v in (("clean", clean), ("prefixed", prefixed))}
        return {"row": name, "victim": victim, "final": final}

    rows = [row("strong", "tiny-resnet", (3.0, 3.8), (2.0, 4.6)), row("weak", "tiny-resnet", (20.0, 11.0), (9.0, 9.0)),
            row("strong", "small-vit", (2.0, 2.0), (2.0, 2.0))]
    strong, weak = goal_rows(rows, clean_final=[20.0, 20.0], chance=2.0, victim="tiny-resnet")
    # the higher direction decides: 3.8 - 4.0 on clean captions, but 4.6 - 4.0 on prefixed ones
    assert (strong["distance_clean"], strong["distance_prefixed"]) == (-0.2, 0.6)
    assert strong["margin_removed"] == 0.9          # t2i: 1 - 1.8 / 18, the worse direction
    assert (weak["distance_clean"], weak["margin_removed"]) == (16.0, 0.0)
    # each row is judged against the control that makes its kind of edit with nothing optimised
    assert [matched_control(r) for r in ("mem3", "mem5", "em", "mem3+strip", "mem3-cluster", "cluster-trigger-only")] == \
        ["random-words", "random-words", "random", "random", "random-words-cluster", "random-words-cluster"]
    # a randomly placed trigger survives strip, and so does its control; mem3-cn's clusters are its own
    assert [matched_control(r) for r in ("mem3-rand", "mem3-rand+strip", "mem3-cn")] == \
        ["random-words-rand", "random-words-rand+strip", "random-words-cn"]
    # a blur per cluster is judged against the same blur per image (no grouping), not against noise
    assert [matched_control(r) for r in ("conv", "conv+jpeg75")] == ["conv-sample", "conv-sample+jpeg75"]
    # with no trigger in the captions, strip cuts real words: the cost it has on clean data is the control
    assert [matched_control(r) for r in ("uc-text+strip", "em+strip")] == ["clean+strip", "clean+strip"]


def test_merge_joins_disjoint_rows_keeps_the_first_protection_record_and_refuses_a_clash(tmp_path):
    from mempipe_research.report import merge

    def part(name, rows, psnr):
        path = tmp_path / name
        path.write_text(json.dumps({"meta": {"style": "photo"}, "protection": {"mem3": {"psnr": psnr}},
                                    "rows": [{"row": r, "victim": v} for r, v in rows]}))
        return path

    first = part("a.json", [("mem3", "tiny-resnet")], 33.4)
    second = part("b.json", [("mem3", "small-vit"), ("em", "small-vit")], 33.5)
    out = tmp_path / "merged.json"
    merge([first, second], out)
    merged = json.loads(out.read_text())
    assert [(r["row"], r["victim"]) for r in merged["rows"]] == [
        ("mem3", "tiny-resnet"), ("mem3", "small-vit"), ("em", "small-vit")]
    assert merged["protection"]["mem3"]["psnr"] == 33.4
    assert merged["meta"]["merged_from"] == ["a.json", "b.json"]
    with pytest.raises(SystemExit, match="already in an earlier file"):
        merge([first, part("c.json", [("mem3", "tiny-resnet")], 33.6)], out)
