"""Write the README's result tables from bench/results/*.json (between marker comments)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def effectiveness_table(name: str = "effectiveness") -> str:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return f"(not measured yet: `python bench/effectiveness.py`, writing {path.name})"
    data = json.loads(path.read_text())
    rows = data["rows"]
    victims = sorted({r["victim"] for r in rows}, key=lambda v: (v != "tiny-resnet", v))
    chance = rows[0]["final"]["clean"]["chance_R@10"]
    lines = [f"R@10 (%) on the clean 500-pair test split, image→text / text→image; chance = {chance}. "
             "`prefixed`: the same test images with 3 random words in front of every test caption.", "",
             "| row | what it is | " + " | ".join(f"{v} clean | {v} prefixed" for v in victims) + " | measured on |",
             "|---|---|" + "---|---|" * len(victims) + "---|"]
    order = list(dict.fromkeys(r["row"] for r in rows))
    for name in order:
        cells = []
        what = next(r["what"] for r in rows if r["row"] == name)
        for v in victims:
            r = next((r for r in rows if r["row"] == name and r["victim"] == v), None)
            if r is None:
                cells += ["–", "–"]
                continue
            c, p = r["final"]["clean"], r["final"]["prefixed"]
            cells += [f"{c['i2t_R@10']:.1f} / {c['t2i_R@10']:.1f}", f"{p['i2t_R@10']:.1f} / {p['t2i_R@10']:.1f}"]
        devices = sorted({r.get("device", "?") for r in rows if r["row"] == name})
        lines.append(f"| {name} | {what} | " + " | ".join(cells) + f" | {', '.join(devices)} |")
    lines += ["", "Imperceptibility of each protected set (measured against the originals by `mempipe inspect`):", "",
              *protection_rows(data["protection"])]
    # a source names the run that measured the row; the page names only the hardware
    sources = sorted({r.get("source", "?").split(",")[0].replace(" (device tool)", "").replace("cpu: vm", "cpu: a CPU")
                      for r in rows})
    lines += ["", f"Where the numbers come from: {'; '.join(sources)} (each row's `source` in the JSON)."]
    return "\n".join(lines)


def protection_rows(protection: dict) -> list[str]:
    """The imperceptibility table of protected sets (max |delta|, PSNR, SSIM, protect time)."""
    lines = ["| set | max abs delta | PSNR (dB) | SSIM | protect time (s) |", "|---|---|---|---|---|"]
    for name, p in sorted(protection.items()):
        ssim = f"{p['ssim']:.4f}" if p.get("ssim") is not None else "–"
        lines.append(f"| {name} | {p['max_delta']} | {p['psnr']} | {ssim} | {p['seconds']} |")
    return lines


def _result(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


from mempipe_research.report import (CAPTION_CONTROL, CONTROL_SHARE_NEEDED, CONTROLS,  # noqa: E402,F401
                                     GOAL_TIMES_CHANCE, IMAGE_CONTROL, IMAGE_ONLY, STRIP_SURVIVES,
                                     goal_rows, matched_control)


def goal_table(name: str = "effectiveness_photo", victim: str = "tiny-resnet") -> str:
    """The issue-13 goal per row, each judged against its matched control from the same file."""
    data, calibration = _result(name), _result("calibration")
    if data is None or calibration is None:
        return "(not measured yet: `python bench/calibrate.py` and `python bench/effectiveness.py --style photo`)"
    chance = data["rows"][0]["final"]["clean"]["chance_R@10"]
    clean_row = next((r for r in data["rows"] if r["row"] == "clean" and r["victim"] == victim), None)
    if clean_row is not None:
        clean_final, source = [clean_row["final"]["clean"][f"{d}_R@10"] for d in ("i2t", "t2i")], "its clean row"
    else:  # the calibration's clean run: same bytes, same victim and protocol
        level = str(data["meta"]["difficulty"])
        clean = calibration["levels"][level]["clean"]["final"]
        clean_final, source = [clean["i2t_R@10"], clean["t2i_R@10"]], f"the calibration's clean run at difficulty {level}"
    table = goal_rows(data["rows"], clean_final, chance, victim)
    kept = {g["row"]: 1 - g["margin_removed"] for g in table if g["row"] in CONTROLS}
    # the regime rule: where random words per caption defeat the victim, no row can count
    regime_valid = kept.get("random-words", 0.0) >= CONTROL_SHARE_NEEDED
    lines = [f"{victim}, clean reference {clean_final[0]:.1f} / {clean_final[1]:.1f} ({source}); goal: R@10 at most "
             f"{GOAL_TIMES_CHANCE:g}x chance = {GOAL_TIMES_CHANCE * chance:.1f} both ways, on clean and prefixed test "
             "captions. Distance = the higher direction minus the goal (≤ 0 meets it); margin removed = share of "
             "clean's margin above chance that the row takes away (worse direction). A row counts only if it meets "
             f"the goal and its matched control (the same caption edit, nothing optimised) keeps ≥ "
             f"{CONTROL_SHARE_NEEDED:.2f} of clean's margin, in a regime where the per-caption random-words control "
             "does.", "",
             "| row | distance, clean captions | distance, prefixed captions | margin removed | goal met | "
             "matched control: margin it keeps | counts |", "|---|---|---|---|---|---|---|"]
    for g in sorted(table, key=lambda g: max(g["distance_clean"], g["distance_prefixed"])):
        met = g["distance_clean"] <= 0 and g["distance_prefixed"] <= 0
        if g["row"] in CONTROLS:
            control, counts = "(a control)", "–"
        else:
            c = matched_control(g["row"])
            share = kept.get(c)
            control = f"{c}: {share:.2f}" if share is not None else f"{c}: not measured"
            counts = "yes" if met and regime_valid and share is not None and share >= CONTROL_SHARE_NEEDED else "no"
        lines.append(f"| {g['row']} | {g['distance_clean']:+.1f} | {g['distance_prefixed']:+.1f} | "
                     f"{g['margin_removed']:.2f} | {'yes' if met else 'no'} | {control} | {counts} |")
    if not regime_valid:
        lines += ["", f"The per-caption random-words control keeps {kept.get('random-words', 0.0):.2f} of clean's margin "
                      f"(needed ≥ {CONTROL_SHARE_NEEDED:.2f}): **the regime fails the issue's rule, so no row here counts "
                      "as protection**, whatever its distance."]
    return "\n".join(lines)


def calibration_table(name: str = "calibration") -> str:
    data = _result(name)
    if data is None:
        return f"(not measured yet: `python bench/calibrate.py`, {name}.json)"
    m, crit = data["meta"], data["meta"]["criteria"]
    per_image = m.get("captions_per_image", 1)
    shape = f" ({m['train'] // per_image} images, {per_image} captions each)" if per_image > 1 else ""
    lines = [f"{m['victim']} victim, {m['train']} training{shape} / {m['test']} test pairs, {m['epochs']} epochs, {m['device']} "
             f"({m['host']}); R@10 on the clean test split, image→text / text→image; chance "
             f"{next(iter(data['levels'].values()))['chance_R@10']}. Valid: clean final R@10 in {crit['clean_range']} and "
             f"still rising after epoch {crit['rising_after_epoch']}, and the random-words control keeping ≥ "
             f"{int(crit['control_share'] * 100)} % of clean's margin above chance.", "",
             "| difficulty | clean R@10 (epoch 10) | clean R@10 (final) | random-words R@10 (final) | control's share of clean's margin | valid |",
             "|---|---|---|---|---|---|"]
    for level in sorted(data["levels"], key=float):
        v = data["levels"][level].get("verdict")
        if not v:
            continue
        lines.append(f"| {level} | {v['clean_at_epoch_10'][0]:.1f} / {v['clean_at_epoch_10'][1]:.1f} | "
                     f"{v['clean_final'][0]:.1f} / {v['clean_final'][1]:.1f} | {v['control_final'][0]:.1f} / "
                     f"{v['control_final'][1]:.1f} | {v['control_share_of_margin'][0]:.2f} / "
                     f"{v['control_share_of_margin'][1]:.2f} | {'yes' if v['valid'] else 'no'} |")
    pick = data.get("pick", {})
    if name == "calibration":
        lines += ["", f"Picked: difficulty **{pick.get('difficulty')}** ({pick.get('rule')}); curves: "
                      f"`bench/results/{name}.png`."]
    else:  # an alternative data shape, judged by the same rule; the frozen regime is calibration.json's
        lines += ["", f"The same rule would pick difficulty {pick.get('difficulty')} ({pick.get('rule')}); "
                      f"{'valid, see below' if pick.get('criteria_met') else 'not adopted, see below'}; curves: "
                      f"`bench/results/{name}.png`."]
    return "\n".join(lines)


def shared_surrogate_table() -> str:
    d = _result("shared_surrogate")
    if d is None:
        return "(not measured yet: `python bench/shared_surrogate.py`)"
    lines = [f"{d['samples']} demo samples, cpu-tiny loop counts, units of {d['unit']} ({d['units']} units), "
             f"{d['threads']} CPU threads ({d['host']}), both paths in one run:", "",
             "| path | seconds | of which the run's surrogate | samples/s | mean final PGD loss |", "|---|---|---|---|---|"]
    for name, r in d["paths"].items():
        lines.append(f"| {name} | {r['seconds']} | {r['shared_surrogate_seconds'] or '–'} | {r['samples_per_s']} | "
                     f"{r['final_pgd_loss_mean']} |")
    lines += ["", f"Speedup of the shared surrogate: **{d['speedup_shared_over_per_unit']}×**."]
    flops = RESULTS / "flops.json"
    if flops.exists() and "shared" in json.loads(flops.read_text()):
        f = json.loads(flops.read_text())
        rows = {r["unit"]: r for r in f["by_unit_size"]}
        lines += ["", f"Paper protocol, counted FLOPs per sample (`bench/flops.py`; the shared surrogate spread over "
                      f"{f['shared']['dataset_samples']:,} samples):", "",
                  "| unit | per-unit surrogate TFLOP/sample | shared TFLOP/sample | shared: share of H100 bf16 peak for 50 samples/s |",
                  "|---|---|---|---|"]
        for r in f["shared"]["by_unit_size"]:
            per_unit = rows.get(r["unit"], {}).get("tflop_per_sample", "–")
            lines.append(f"| {r['unit']} | {per_unit} | {r['tflop_per_sample']} | {r['share_of_h100_peak']:.0%} |")
    return "\n".join(lines)


def shortcut_race_table(name: str = "shortcut_race") -> str:
    data = _result(name)
    if data is None:
        return f"(not measured yet: `python bench/shortcut_race.py`{' --style photo' if 'photo' in name else ''})"
    m = data["meta"]
    lines = [f"{m['victim']} victim, {m['epochs']} epochs, {m['train']} training pairs, {m['device']} ({m['host']}); "
             "R@10 image→text / text→image, chance 2.0.", "",
             "| planted set | max abs noise | clean test R@10 | code R@10 (noise alone → its caption) |", "|---|---|---|---|"]
    for s in data["sets"]:
        code = f"{s['final_code'][0]:.1f} / {s['final_code'][1]:.1f}" if s["max_abs_noise"] else "– (nothing planted)"
        lines.append(f"| {s['set']} | {s['max_abs_noise']} | {s['final_clean'][0]:.1f} / {s['final_clean'][1]:.1f} | {code} |")
    return "\n".join(lines)


def _throughput_rows(t: dict, lines: list[str]) -> None:
    what = f"{t['samples']} samples, {t['config']['outer_iters']} rounds x {t['config']['train_steps']} surrogate steps"
    quick = ", --quick" if t.get("quick") else ""
    lines.append(f"| CPU overhead ratio, MEM loop ÷ same model work in a tight loop ({what}{quick}) | "
                 f"{t['overhead_ratio']:.3f} ({t['mem_seconds']} s / {t['replay_seconds']} s) | {t['host']}, {t['threads']} threads |")
    lines.append(f"| cpu-tiny MEM throughput ({what}{quick}) | {t['mem_samples_per_s']:.2f} samples/s, "
                 f"{t['mem_seconds']:.0f} s | {t['host']}, {t['threads']} threads |")


def performance_table() -> str:
    lines = ["| measurement | value | where |", "|---|---|---|"]
    components = None
    for name in ("throughput.json", "throughput_2000.json"):
        tp = RESULTS / name
        if tp.exists():
            t = json.loads(tp.read_text())
            _throughput_rows(t, lines)
            components = t.get("components", components)
    if components:
        for key, c in components.items():
            if key.startswith("text_tower_") and c["used_width"] < c["context"]:  # else nothing was cut
                lines.append(f"| text tower {key.removeprefix('text_tower_')}, batch {c['batch']}: full {c['context']}-token "
                             f"context vs the {c['used_width']} positions used (exact) | {c['full_context_s']} s vs "
                             f"{c['used_positions_s']} s ({c['speedup']}x) | CPU |")
        g = components["group_swap_losses"]
        lines.append(f"| HotFlip group-swap losses, batch {g['batch']}, d {g['dim']}, per-sample groups: one logit matrix "
                     f"per group vs two matrices (exact) | {g['dense_s']} s vs {g['engine_s']} s ({g['speedup']}x) | CPU |")
    mem = RESULTS / "memory.json"
    if mem.exists():
        m = json.loads(mem.read_text())
        for r in m["runs"]:
            lines.append(f"| Ray pipeline peak RSS, {r['samples']} demo samples (driver / whole process tree) | "
                         f"{r['peak_driver_rss_mib']:.0f} / {r['peak_tree_rss_mib']:.0f} MiB, {r['seconds']} s | {m['host']} (2 cores) |")
        lines.append(f"| peak RSS ratio {m['runs'][-1]['samples']} ÷ {m['runs'][0]['samples']} samples (tree / driver) | "
                     f"{m['ratio_tree']} / {m['ratio_driver']} | {m['host']} |")
    fl = RESULTS / "flops.json"
    if fl.exists():
        f = json.loads(fl.read_text())
        for label, u in f["unit_flops"].items():
            lines.append(f"| paper protocol, FLOPs per sample (unit {f['unit']}, text tower on {label.replace('_', ' ')}) | "
                         f"{u['per_sample'] / 1e12:.1f} TFLOP (surrogate {u['surrogate'] / u['total']:.0%}, PGD "
                         f"{u['pgd'] / u['total']:.0%}, HotFlip {u['hotflip'] / u['total']:.0%}) | counted (FlopCounterMode) |")
        for row in f["by_unit_size"]:
            need = next(v for k, v in row.items() if k.startswith("tflops_needed"))
            lines.append(f"| sustained rate needed for 50 samples/s, unit {row['unit']} | {need} TFLOP/s = "
                         f"{row['share_of_h100_peak']:.0%} of the H100 bf16 dense datasheet peak | counted FLOPs |")
        if "recorded_gpu_run" in f:
            r = f["recorded_gpu_run"]
            a = r["achieved_tflops"]
            lines.append(f"| FLOP rate achieved by the recorded GPU run (surrogate / PGD / HotFlip; whole protocol) | "
                         f"{a['surrogate']} / {a['pgd']} / {a['hotflip']}; {r['achieved_tflops_overall']} TFLOP/s | {r['gpu']} |")
            projected = ", ".join(f"{row['projected_samples_per_s_at_recorded_rate']} (unit {row['unit']})"
                                  for row in f["by_unit_size"])
            lines.append(f"| **projection, not measured**: current code's FLOPs at that run's rate | {projected} samples/s | "
                         f"counted FLOPs ÷ {r['gpu']} rate |")
        d = f.get("default_path")
        if d:
            for label in ("ViT-B-32", "ViT-B-32 + RN50"):
                row = d[label]
                projected = (f"; **projected, not measured**: {row['projected_samples_per_s_at_recorded_pgd_rate']} "
                             f"samples/s per GPU at the recorded PGD rate, LAION-400M in {row['laion400m_gpu_hours']:,} "
                             f"GPU-hours" if "laion400m_gpu_hours" in row else "")
                needed = (f"; 300 samples/s needs {row['tflops_needed_for_300_samples_per_s']} TFLOP/s = "
                          f"{row['share_of_h100_peak_for_300']:.0%} of the H100 bf16 dense datasheet peak"
                          if "tflops_needed_for_300_samples_per_s" in row else "")
                lines.append(f"| default path ({d['preset']}, {d['pgd_steps_per_sample']} PGD steps), surrogate "
                             f"{label} at 224 px, FLOPs per sample | {row['tflop_per_sample']} TFLOP{needed}{projected} | "
                             f"counted (FlopCounterMode) |")
            if "paper_protocol_laion400m_gpu_hours" in d:
                lines.append(f"| paper protocol (shared surrogate, unit 2048), LAION-400M | "
                             f"{d['paper_protocol_laion400m_gpu_hours']:,} GPU-hours (projected the same way) | counted FLOPs |")
    tp = _result("throughput")
    if tp and "methods" in tp:
        m = tp["methods"]
        rates = m["samples_per_s"]
        lines.append(f"| `mempipe protect --no-ray` on {m['samples']} demo pairs ({m['image_px']} px), fit included, "
                     f"surrogate {m['surrogate']}: default / cpu-tiny MEM / random noise | {rates['default']} / "
                     f"{rates['cpu-tiny']} / {rates['random']} samples/s: the default is {m['default_over_cpu_tiny']}x "
                     f"cpu-tiny | CPU, {m['threads']} threads, one run |")
    gc = RESULTS / "gpu_check.json"
    if gc.exists():
        g = json.loads(gc.read_text())
        code = f"commit {g['commit']}" if "commit" in g else "code before commit b9e1e12 (the exact text/HotFlip shortcuts)"
        b = g.get("variants", {}).get("paper") or g["bf16"]   # older files kept the paper row as "bf16"
        for name, v in g.get("variants", {"paper": b}).items():
            lines.append(f"| {name} over {g['unit']} samples (bf16), {v['measured']} | surrogate {v['train_s']:.1f} s, "
                         f"HotFlip {v['hotflip_s']:.1f} s, PGD {v['pgd_s']:.1f} s | {g['gpu']}, {code} |")
            for e in v.get("extrapolated", []):
                lines.append(f"| {name}, full protocol (20 rounds), unit {e['unit']} | {e['samples_per_s']} samples/s "
                             f"(extrapolated from the round) | {g['gpu']}, {code} |")
        rate = b["extrapolated"][0]["samples_per_s"] if "extrapolated" in b else b["extrapolated_samples_per_s"]
        lines.append(f"| paper preset, full protocol (20 rounds), unit {g['unit']} | {rate} "
                     f"samples/s (extrapolated from the round) | {g['gpu']}, {code} |")
        lines.append(f"| peak GPU memory, paper preset | {b['peak_gpu_memory_gib']} GiB | {g['gpu']} |")
        pc = g["precision_check"]
        lines.append(f"| bf16 vs fp32, PGD loss after one round | {pc['bf16_pgd_loss'][1]:.4f} vs {pc['fp32_pgd_loss'][1]:.4f} "
                     f"(relative difference {pc['relative_pgd_loss_difference']:.4f}, tolerance {pc['tolerance']}) | {g['gpu']} |")
    return "\n".join(lines)


def faults_table() -> str:
    data = _result("faults")
    if data is None:
        return "(not measured yet: `python bench/faults.py`, writing faults.json)"
    if "shard_MiB" not in data:
        return "(faults.json is from an older version of the bench: run `python bench/faults.py` again)"
    lines = [f"`bench/faults.py`: {data['what']}. {data['shards']} shards of {data['per_shard']} samples "
             f"({', '.join(str(m) for m in data['shard_MiB'])} MiB each, {data['image_px']} px PNG), upload parts of "
             f"{data['part_MiB']} MiB, ranged reads of {data['read_range_MiB']:g} MiB; a row that ends with failed "
             "shards is run again, at most twice.", "",
             "| connection faults / resets per 64 KB | runs | keys in | protected | failed | in failed shards | lost | "
             "duplicated | faults injected | retries (last run) | MiB sent up (stored) | time vs fault-free |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        kinds = ", ".join(f"{k} {v}" for k, v in r["faults_by_kind"].items()) or "none"
        retries = ", ".join(f"{k} {v}" for k, v in sorted(r["retries_last_run"].items())) or "none"
        lines.append(f"| {r['connection_fault_rate']:.0%} / {r['reset_per_64KB']:.0%} | {r['runs']} | {r['keys_in']} | "
                     f"{r['keys_protected']} | {r['keys_failed']} | {r['keys_in_failed_shards']} | {r['lost']} | "
                     f"{r['duplicated']} | {r['faults_injected']} ({kinds}) | {retries} | {r['bytes_up_MB']} "
                     f"({r['bytes_stored_MB']}) | {r['time_vs_fault_free']}x ({r['seconds']} s) |")
    return "\n".join(lines)


def memory_table() -> str:
    data = _result("memory_cluster")
    windows = _result("windows")
    if data is None:
        return "(not measured yet: `python bench/memory.py --partition cluster`)"
    lines = [f"`bench/memory.py --partition cluster`: {data['actors']} CPU actors, {data['image_px']} px demo images, "
             "a minimal engine config (the engine's own memory follows `unit_size`, not the dataset), sampled every "
             "0.25 s. Object store = bytes in use in /dev/shm (Ray's object store) above the level before the run.", "",
             "| samples | shards | driver peak RSS | largest worker peak RSS | whole tree | object store | "
             "first shard written after | run |", "|---|---|---|---|---|---|---|---|"]
    for r in data["runs"]:
        lines.append(f"| {r['samples']:,} | {r['shards']} | {r['peak_driver_rss_mib']:.0f} MiB | "
                     f"{r['peak_worker_rss_mib']:.0f} MiB | {r['peak_tree_rss_mib']:.0f} MiB "
                     f"({r['processes_at_peak']} processes) | {r['peak_object_store_shm_mib']:.0f} MiB | "
                     f"{r['first_shard_written_after_s']} s | {r['seconds']} s |")
    first, last = data["runs"][0]["samples"], data["runs"][-1]["samples"]
    lines += ["", f"Largest ÷ smallest ({last:,} ÷ {first:,} samples): driver {data['ratio_driver']}x, worker "
              f"{data['ratio_worker']}x, object store {data['ratio_object_store']}x (the sum over every process, "
              f"{data['ratio_tree']}x, counts one more Ray worker alive at the larger runs' peak)."]
    if windows:
        lines += ["", f"What a window changes (`bench/windows.py`: {windows['samples']:,} demo samples in "
                  f"{windows['shards']} shards of {windows['per_shard']}, {windows['clusters']} fitted clusters, "
                  f"units of {windows['unit_size']}): every sample gets the cluster a global clustering gives it; a "
                  "cluster's samples are split into one fragment per window.", "",
                  "| window (shards) | fragments | mean fragment | median | smallest | units | clusters per unit |",
                  "|---|---|---|---|---|---|---|"]
        for r in windows["rows"]:
            lines.append(f"| {r['window_shards']} | {r['fragments']} | {r['mean_fragment']} | {r['median_fragment']} | "
                         f"{r['min_fragment']} | {r['units']} | {r['mean_clusters_per_unit']} |")
    return "\n".join(lines)


def planning_line() -> str:
    data = _result("planning")
    if data is None:
        return "(not measured yet: `python bench/planning.py`)"
    return (f"  {data['one_listing_s']} s instead of {data['one_request_per_shard_s']} s with one request per shard "
            f"({data['speedup']}x; `bench/planning.py`, {data['shards']} shards, {data['endpoint']}).")


def _pm(stat: dict) -> str:
    return f"{stat['mean']:.1f}" + (f" ± {stat['sd']:.1f}" if stat.get("sd") is not None else "")


def _seeds(entry: dict) -> str:
    """Runs behind a mean (one fine-tune per seed and build); a dagger where they span two builds."""
    return f"{entry['seeds']}†" if entry.get("builds", 1) > 1 else str(entry["seeds"])


BUILDS_NOTE = ("†: runs on two builds of the public stand-ins, one fine-tune per seed and build. The same seed "
               "gives the same checkpoint bytes on one CPU (pretraining again on the rebuild's CPU reproduced its "
               "bytes), not across CPUs: the rebuild on another CPU differs in the last bits (its web-test "
               "retrieval within 0.6 R@10 points), and each run records the build it used.")


def _builds_note(table: dict) -> list[str]:
    """The dagger's footnote, where any mean of the table spans two builds."""
    spans = any(r.get("builds", 1) > 1 for rows in table.values() for r in rows.values())
    return ["", BUILDS_NOTE] if spans else []


def calibration_finetune_table() -> str:
    """Zero-shot, clean and random-words fine-tuning gains per public model and strength, and the pick."""
    data = _result("calibration_finetune")
    if data is None:
        return "(not measured yet: `python bench/calibrate.py --regime finetune`)"
    lines = ["R@10 gain over zero-shot (points, mean ± sd over runs) on the owner's clean 500-pair test split, "
             "image→text / text→image. Valid for the image-noise question: clean gains ≥ 15 in both directions; "
             "for the trigger question also: the control keeps ≥ 70 % of clean's gain.", "",
             "| public model | strength | runs | zero-shot R@10 | clean gain | random-words gain | control's share "
             "| final train loss clean / control | image-noise valid | trigger valid |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for letter, rows in data["table"].items():
        for strength, r in rows.items():
            z = r["zero_shot"]
            share = " / ".join("–" if v is None else f"{v:.2f}" for v in r["control_share"].values())
            name = f"{strength} (after the freeze)" if r.get("after_freeze") else strength
            lines.append(f"| {letter} | {name} | {_seeds(r)} | {z['i2t']:.1f} / {z['t2i']:.1f} | "
                         f"{_pm(r['clean_gain']['i2t'])} / {_pm(r['clean_gain']['t2i'])} | "
                         f"{_pm(r['control_gain']['i2t'])} / {_pm(r['control_gain']['t2i'])} | {share} | "
                         f"{r['clean_final_loss']['mean']:.2f} / {r['control_final_loss']['mean']:.2f} | "
                         f"{'yes' if r['valid_image_noise'] else 'no'} | {'yes' if r['valid_trigger'] else 'no'} |")
    lines.append("")
    axes = {name: spec for name, spec in data.get("axes", {}).items() if name in data["table"]}
    if axes:
        lines.append("- Axes of the public model, beside A (clean and control only, never picked from): " + "; ".join(
            f"{name}: {spec['arch']}, pretrained {spec['epochs']} epochs on {spec['pairs']:,} pairs"
            for name, spec in axes.items()) + ".")
    for question, f in data["frozen"].items():
        lines.append(f"- Frozen for the {question.replace('_', '-')} question: `{f['strength']}` (lr {f.get('lr')}, "
                     f"{f.get('epochs')} epochs): {f['rule']}.")
    if any(r.get("after_freeze") for rows in data["table"].values() for r in rows.values()):
        lines.append("- Strengths marked *after the freeze* were calibrated (clean and control only) after the first "
                     "freeze's protected rows had run. They are never eligible for the first pick; they get their own "
                     "by the same rule, frozen before any protected row ran at them:")
        for question, f in data.get("frozen_after", {}).items():
            lines.append(f"  second freeze for the {question.replace('_', '-')} question: `{f['strength']}`: "
                         f"{f['rule']}.")
    lines += _builds_note(data["table"])
    return "\n".join(lines)


def effectiveness_finetune_table(name: str = "effectiveness_finetune") -> str:
    """Fine-tuning gains of every row, per victim, with its share of clean's gain and the 2-sd verdict."""
    data = _result(name)
    if data is None:
        return "(not measured yet: `python bench/effectiveness.py --regime finetune`)"
    names = {"A": "public model A fine-tuned (same model as the surrogate)",
             "B": "public model B fine-tuned (transfer to another family)", "scratch": "from scratch (reference)"}
    lines = []
    for victim, rows in data["table"].items():
        lines += [f"**{names.get(victim, victim)}**: R@10 gain over zero-shot, image→text / text→image, "
                  "mean ± sd over runs; share: of clean's gain (the smaller the better for a protection); "
                  "vs control: the gap exceeds twice the pooled sd (yes), does not (no), one run (–).", "",
                  "| row | what it is | runs | clean captions gain | prefixed gain | share of clean (clean; prefixed) "
                  "| vs control |", "|---|---|---|---|---|---|---|"]
        for label, r in rows.items():
            share = r.get("share_of_clean")
            share_text = "; ".join(" / ".join("–" if v is None else f"{v:.2f}" for v in share[s].values())
                                   for s in ("clean", "prefixed")) if share else "–"
            verdict = r.get("differs_from_control")
            if verdict:
                flat = [v for split in verdict.values() for v in split.values()]
                verdict_text = f"{r['control']}: " + ("–" if None in flat else ("yes" if all(flat) else
                                                                               "partly" if any(flat) else "no"))
            else:
                verdict_text = ""
            lines.append(f"| {label} | {r['what']} | {_seeds(r)} | {_pm(r['clean']['i2t'])} / {_pm(r['clean']['t2i'])} | "
                         f"{_pm(r['prefixed']['i2t'])} / {_pm(r['prefixed']['t2i'])} | {share_text} | {verdict_text} |")
        lines.append("")
    lines += ["Protected sets (against public model A, frozen; `mempipe inspect` against the originals):", "",
              *protection_rows(data["protection"])]
    frozen = data["meta"].get("frozen", {})
    invalid = [q.replace("_", "-") for q, f in frozen.items() if not f.get("valid")]
    lines += ["", "The goal's bars (same-model victim first)"
              + (f"; calibration found no valid strength for the {' and '.join(invalid)} question(s), so a bar "
                 "met here is a number in an invalid regime, not a protection claim" if invalid else "") + ":", ""]

    def verdict(q: dict) -> str:
        if q["met"]:
            return "met"
        return "bars met in numbers, regime not valid" if q.get("bars_met") else "not met"

    for victim, g in data["goal"].items():
        i, t = g["image_noise"], g["trigger"]
        lines.append(f"- {victim}: image noise, best `{i['best']}` keeps at most {i['its_largest_share']} of clean's gain "
                     f"(bar ≤ 0.20) while random noise keeps at least {i['random_smallest_share']} (bar ≥ 0.80): "
                     f"{verdict(i)}; trigger, best `{t['best']}` keeps at most "
                     f"{t['its_largest_share']} while the random-words control keeps at least "
                     f"{t['control_smallest_share']} (bar ≥ 0.70): {verdict(t)}.")
    lines += _builds_note(data["table"])
    return "\n".join(lines)


HEADLINE_ROWS = ("clean", "random", "em", "uc", "mem3+orig", "mem3", "random-words", "trigger-only")


def finetune_headline_table(name: str = "effectiveness_finetune") -> str:
    """The README's compact view: the headline rows' gains for the fine-tuned victims."""
    data = _result(name)
    if data is None:
        return "(not measured yet: `python bench/effectiveness.py --regime finetune`)"
    victims = [v for v in ("A", "B") if v in data["table"]]
    lines = ["| row | what it is | " + " | ".join(f"{v} fine-tuned: gain (clean captions) | {v}: share of clean"
                                              for v in victims) + " |",
             "|---|---|" + "---|---|" * len(victims)]
    for row in HEADLINE_ROWS:
        entries = [data["table"][v].get(row) for v in victims]
        what = next((e["what"] for e in entries if e), None)
        if what is None:
            continue
        cells = []
        for e in entries:
            if e is None:
                cells += ["–", "–"]
                continue
            share = e.get("share_of_clean", {}).get("clean", {})
            cells += [f"{_pm(e['clean']['i2t'])} / {_pm(e['clean']['t2i'])} ({_seeds(e)} run{'s' if e['seeds'] > 1 else ''})",
                      " / ".join("–" if share.get(d) is None else f"{share[d]:.2f}" for d in ("i2t", "t2i"))]
        lines.append(f"| {row} | {what} | " + " | ".join(cells) + " |")
    lines += _builds_note(data["table"])
    return "\n".join(lines)


def thief_calibration_table() -> str:
    """The thief regime's calibration: clean and random-words gains per victim, and the freeze."""
    data = _result("thief_frozen")
    if not data:
        return "_not run yet_"
    lines = ["| victim | clean gain (R@10 i2t / t2i) | runs | random-words gain | valid (clean ≥ 15 both ways) |",
             "|---|---|---|---|---|"]
    for victim, row in data["table"].items():
        control = row["control_gain"]
        lines.append(f"| {victim} | {_pm(row['clean_gain']['i2t'])} / {_pm(row['clean_gain']['t2i'])} | {row['seeds']} | "
                     + (f"{_pm(control['i2t'])} / {_pm(control['t2i'])}" if control else "–")
                     + f" | {'yes' if row['valid_image_noise'] else 'no'} |")
    lines += ["", f"Frozen at {data['frozen_at']} from these rows alone; thief: open_clip_train, lr {data['thief']['lr']}, "
                  f"{data['thief']['epochs']} epochs, batch {data['thief']['batch_size']}, on {data['owner']['train']:,} "
                  f"pairs of {data['owner']['size']} px images."]
    return "\n".join(lines)


def thief_table(victims=("C", "A", "B")) -> str:
    """Gains (clean test captions) of every thief row per victim, share of clean's gain, verdict against its control."""
    data = _result("effectiveness_thief")
    if not data:
        return "_not run yet_"
    present = [v for v in victims if v in data["table"]]
    order = ["clean", "random", "random-words"]
    labels = sorted(dict.fromkeys(label for v in present for label in data["table"][v]),
                    key=lambda label: (order.index(label) if label in order else len(order), "@" in label))
    head = "| row | what it is | " + " | ".join(f"{v}: gain i2t / t2i (runs) | {v}: share of clean" for v in present) + " |"
    lines = [head, "|---|---|" + "---|---|" * len(present)]
    for label in labels:
        what = next(data["table"][v][label]["what"] for v in present if label in data["table"][v])
        cells = []
        for v in present:
            e = data["table"][v].get(label)
            if not e:
                cells += ["–", "–"]
                continue
            share = e.get("share_of_clean", {}).get("clean", {})
            verdict = e.get("differs_from_control", {}).get("clean", {})
            mark = ""
            if verdict and all(verdict.get(d) for d in ("i2t", "t2i")):   # the rule is two-sided: say which way
                control = data["table"][v][e["control"]]["clean"]
                below = all(e["clean"][d]["mean"] < control[d]["mean"] for d in ("i2t", "t2i"))
                mark = " *" if below else " †"
            cells += [f"{_pm(e['clean']['i2t'])} / {_pm(e['clean']['t2i'])} ({e['seeds']})",
                      " / ".join("–" if share.get(d) is None else f"{share[d]:.2f}" for d in ("i2t", "t2i")) + mark]
        lines.append(f"| {label} | {what} | " + " | ".join(cells) + " |")
    lines += ["", "*: below its control (random noise; clean under the same countermeasure; random words for "
                  "the trigger row) by more than twice the pooled sd in both directions; †: above it by as much. "
                  "Shares: of clean's gain (of clean's under the same countermeasure for an @ row)."]
    return "\n".join(lines)


def thief_protection_table() -> str:
    data = _result("effectiveness_thief")
    if not data:
        return "_not run yet_"
    lines = ["| set | surrogates | transform | seconds per sample (1 CPU thread) | max abs delta | PSNR (dB) |",
             "|---|---|---|---|---|---|"]
    for name, rec in data["protection"].items():
        lines.append(f"| {name} | {'+'.join(rec['surrogates']) or '–'} | {rec['config'].get('transform', 'resize')} | "
                     f"{rec['seconds_per_sample']} | {rec['max_delta']} | {rec['psnr_mean']} |")
    return "\n".join(lines)


def thief_transform_cost_table() -> str:
    data = _result("thief_transform_cost")
    if not data:
        return "_not run yet: `python bench/thief_regime.py --transform-cost`_"
    lines = ["| in the loop | seconds per sample (1 CPU thread) | vs noise at the model's input |", "|---|---|---|"]
    for label, option in data["options"].items():
        lines.append(f"| {label} | {option['seconds_per_sample']} | {option['vs_resize']:.2f} |")
    lines += ["", f"EM (MEM-joint: also {data['engine']['hotflip_iters']} HotFlip steps per round), "
                  f"{data['engine']['outer_iters']} rounds of {data['engine']['pgd_steps']} PGD steps, on the owner's "
                  f"first {data['pairs']} pairs at 64 px, the fastest of {data['passes']} interleaved passes in one run."]
    return "\n".join(lines)


def demo_table() -> str:
    data = _result("demo")
    if not data:
        return "_not run yet: `python bench/demo.py`_"
    lines = ["| the stand-in fine-tuned on | R@10 gain over zero-shot, image→text / text→image | share of clean's gain |",
             "|---|---|---|"]
    for name, row in data["table"].items():
        gain, share = row["gain_R@10"], row["share_of_clean"]
        lines.append(f"| {name} | {gain['i2t']} / {gain['t2i']} | {share['i2t']:.2f} / {share['t2i']:.2f} |")
    steps = ", ".join(f"{s['step'].removeprefix('mempipe ')} {s['seconds']:.0f} s" for s in data["steps"]
                      if s["seconds"] >= 1)
    install = f"; the install before it {data['install_s']:.0f} s" if data.get("install_s") else ""
    lines += ["", f"`make demo` from a fresh clone on {data['cores']} cores: {data['demo_after_install_s']:.0f} s after "
                  f"the install ({steps}){install} (`bench/demo.py`)."]
    return "\n".join(lines)


def thief_headline_table() -> str:
    """Per victim: clean, random noise, the image-noise row that protected best (its smallest share) and
    the best trigger row beside its random-words control, short."""
    data = _result("effectiveness_thief")
    if not data:
        return "_not run yet_"
    lines = ["| victim (fine-tuned by open_clip_train) | clean | random noise | best image noise: its row | share of "
             "clean's gain | MEM's trigger, captions as published | share | random words | share |",
             "|---|---|---|---|---|---|---|---|---|"]
    names = {"A": "A (ViT, the surrogate's own model)", "B": "B (ResNet, the ensemble's second)",
             "C": "C (EfficientNet, held out)"}

    def cell(e):
        return f"{_pm(e['clean']['i2t'])} / {_pm(e['clean']['t2i'])} ({e['seeds']})"

    def share(e):
        s = e["share_of_clean"]["clean"]
        return f"{s['i2t']:.2f} / {s['t2i']:.2f}"

    for victim in ("C", "A", "B"):
        rows, goal = data["table"].get(victim), data["goal"].get(victim)
        if not rows or not goal or not goal["best"]:
            continue
        best, trigger = rows[goal["best"]], goal.get("with_trigger", {}).get("best")
        words = rows.get("random-words")
        trigger_cells = [f"{trigger}: {cell(rows[trigger])}", share(rows[trigger])] if trigger else ["–", "–"]
        words_cells = [cell(words), share(words)] if words else ["–", "–"]
        lines.append(f"| {names[victim]} | {cell(rows['clean'])} | {cell(rows['random'])} | {goal['best']}: "
                     f"{cell(best)} | {share(best)} | " + " | ".join(trigger_cells + words_cells) + " |")
    lines += ["", "Gains in R@10 points over the same model's zero-shot retrieval (image→text / text→image, clean "
                  "test split), mean ± sd over runs (fine-tune seeds, and protection seeds where there are two). "
                  "The trigger rows protect only while the captions stay as published: with the original captions "
                  "restored their images keep what clean keeps (docs/thief.md)."]
    return "\n".join(lines)


TABLES = {
    "demo": demo_table,
    "thief-headline": thief_headline_table,
    "thief-calibration": thief_calibration_table,
    "thief": thief_table,
    "thief-protection": thief_protection_table,
    "thief-transform-cost": thief_transform_cost_table,
    "effectiveness": effectiveness_table,
    "effectiveness-photo": lambda: effectiveness_table("effectiveness_photo"),
    "goal-photo": goal_table,
    "shortcut-race": shortcut_race_table,
    "calibration": calibration_table,
    "calibration-captions5": lambda: calibration_table("calibration_captions5"),
    "shared-surrogate": shared_surrogate_table,
    "shortcut-race-photo": lambda: shortcut_race_table("shortcut_race_photo"),
    "performance": performance_table,
    "faults": faults_table,
    "planning": planning_line,
    "memory-cluster": memory_table,
    "calibration-finetune": calibration_finetune_table,
    "effectiveness-finetune": effectiveness_finetune_table,
    "effectiveness-finetune-8k": lambda: effectiveness_finetune_table("effectiveness_finetune_after_freeze"),
}


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)


def replace_block(text: str, name: str, content: str) -> str:
    pattern = _pattern(name)
    if not pattern.search(text):
        raise SystemExit(f"no {name} markers")
    return pattern.sub(lambda m: m.group(1) + content + "\n" + m.group(2), text)


def main() -> int:
    """Every table goes where its markers are: the README or a page under docs/."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    placed = set()
    for page in pages:
        text = page.read_text()
        for name, make in TABLES.items():
            if _pattern(name).search(text):
                text = replace_block(text, name, make())
                placed.add(name)
        page.write_text(text)
    missing = sorted(set(TABLES) - placed)
    if missing:
        raise SystemExit(f"no page has the markers of: {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
