"""The prepared GPU check must run before a GPU session spends its minutes on it: smoke it on the CPU."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_end_to_end_on_a_tiny_surrogate(tmp_path):
    out = tmp_path / "gpu_check.json"
    tiny = {"arch": "tiny-vit", "image_size": 64, "context_length": 32, "batch_size": 8}
    subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--unit", "16", "--train-steps", "2",
                    "--small", "8", "--variants", "paper,paper+big-batches", "--overrides", json.dumps(tiny),
                    "--out", str(out)], cwd=ROOT, check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    assert set(result["variants"]) == {"paper", "paper+big-batches"}
    for run in result["variants"].values():
        assert min(run["train_s"], run["hotflip_s"], run["pgd_s"]) > 0
        small, big = run["extrapolated"]
        assert (small["unit"], big["unit"]) == (16, 64)
        # surrogate steps are fixed per round, so a bigger unit is cheaper per sample
        assert big["samples_per_s"] > small["samples_per_s"] > 0
    assert result["variants"]["paper+big-batches"]["overrides"] == {"pgd_batch_size": 512, "candidate_chunk": 16}
    assert result["bf16"]["extrapolated_samples_per_s"] == result["variants"]["paper"]["extrapolated"][0]["samples_per_s"]
    # autocast is a GPU path: on a CPU both precisions compute the same thing
    assert result["precision_check"]["relative_pgd_loss_difference"] == 0.0
