"""Write the README's result tables from bench/results/*.json (between marker comments)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def effectiveness_table() -> str:
    data = json.loads((RESULTS / "effectiveness.json").read_text())
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
              "| set | max abs delta | PSNR (dB) | SSIM | protect time (s) |", "|---|---|---|---|---|"]
    for name, p in sorted(data["protection"].items()):
        ssim = f"{p['ssim']:.4f}" if p.get("ssim") is not None else "–"
        lines.append(f"| {name} | {p['max_delta']} | {p['psnr']} | {ssim} | {p['seconds']} |")
    sources = sorted({r.get("source", "?").split(",")[0] for r in rows})
    lines += ["", f"Where the numbers come from: {'; '.join(sources)} (each row's `source` in the JSON)."]
    return "\n".join(lines)


def shortcut_race_table() -> str:
    path = RESULTS / "shortcut_race.json"
    if not path.exists():
        return "(not measured yet: `python bench/shortcut_race.py`)"
    data = json.loads(path.read_text())
    m = data["meta"]
    lines = [f"{m['victim']} victim, {m['epochs']} epochs, {m['train']} training pairs, {m['device']} ({m['host']}); "
             "R@10 image→text / text→image, chance 2.0.", "",
             "| planted set | max abs noise | clean test R@10 | code R@10 (noise alone → its caption) |", "|---|---|---|---|"]
    for s in data["sets"]:
        code = f"{s['final_code'][0]:.1f} / {s['final_code'][1]:.1f}" if s["max_abs_noise"] else "– (nothing planted)"
        lines.append(f"| {s['set']} | {s['max_abs_noise']} | {s['final_clean'][0]:.1f} / {s['final_clean'][1]:.1f} | {code} |")
    return "\n".join(lines)


def performance_table() -> str:
    lines = ["| measurement | value | where |", "|---|---|---|"]
    tp = RESULTS / "throughput.json"
    if tp.exists():
        t = json.loads(tp.read_text())
        lines.append(f"| CPU overhead ratio (MEM loop ÷ same model work in a tight loop) | {t['overhead_ratio']:.3f} | {t['host']} |")
        what = f"{t['samples']} samples, {t['config']['outer_iters']} rounds x {t['config']['train_steps']} surrogate steps"
        lines.append(f"| cpu-tiny MEM throughput ({what}{', --quick' if t.get('quick') else ''}) | "
                     f"{t['mem_samples_per_s']:.2f} samples/s | {t['host']}, {t['threads']} threads |")
    mem = RESULTS / "memory.json"
    if mem.exists():
        m = json.loads(mem.read_text())
        for r in m["runs"]:
            lines.append(f"| Ray pipeline peak RSS, {r['samples']} demo samples (driver / whole process tree) | "
                         f"{r['peak_driver_rss_mib']:.0f} / {r['peak_tree_rss_mib']:.0f} MiB, {r['seconds']} s | {m['host']} (2 cores) |")
        lines.append(f"| peak RSS ratio {m['runs'][-1]['samples']} ÷ {m['runs'][0]['samples']} samples (tree / driver) | "
                     f"{m['ratio_tree']} / {m['ratio_driver']} | {m['host']} |")
    gc = RESULTS / "gpu_check.json"
    if gc.exists():
        g = json.loads(gc.read_text())
        b = g["bf16"]
        lines.append(f"| paper preset over {g['unit']} samples (bf16), {b['measured']} | surrogate {b['train_s']:.1f} s, "
                     f"HotFlip {b['hotflip_s']:.1f} s, PGD {b['pgd_s']:.1f} s | {g['gpu']} |")
        lines.append(f"| paper preset, full protocol (20 rounds) | {b['extrapolated_samples_per_s']} samples/s "
                     f"(extrapolated from the round) | {g['gpu']} |")
        lines.append(f"| peak GPU memory, paper preset | {b['peak_gpu_memory_gib']} GiB | {g['gpu']} |")
        pc = g["precision_check"]
        lines.append(f"| bf16 vs fp32, PGD loss after one round | {pc['bf16_pgd_loss'][1]:.4f} vs {pc['fp32_pgd_loss'][1]:.4f} "
                     f"(relative difference {pc['relative_pgd_loss_difference']:.4f}, tolerance {pc['tolerance']}) | {g['gpu']} |")
    return "\n".join(lines)


def replace_block(text: str, name: str, content: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README has no {name} markers")
    return pattern.sub(lambda m: m.group(1) + content + "\n" + m.group(2), text)


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    text = replace_block(text, "effectiveness", effectiveness_table())
    text = replace_block(text, "shortcut-race", shortcut_race_table())
    text = replace_block(text, "performance", performance_table())
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
