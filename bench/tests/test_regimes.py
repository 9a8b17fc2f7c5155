"""The research benches' own rules: the fine-tuning regime's calibration, freeze and report."""
import json

import pytest


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
