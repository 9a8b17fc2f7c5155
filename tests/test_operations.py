"""Operations: manifests that cannot drift from the CLI, and a real `ray start` + job submission."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mempipe.cli import build_parser, engine_config
from mempipe.data.demo_data import write_split
from mempipe.io.shards import iter_shard

from mempipe_research.testing import fast_config as write_fast_config
from mempipe_research.testing import free_port
from helpers import private_meta, private_run

ROOT = Path(__file__).resolve().parent.parent


def entrypoints():
    found = []
    for path in sorted((ROOT / "deploy").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = (doc or {}).get("spec", {})
            entry = spec.get("entrypoint") or spec.get("jobTemplate", {}).get("entrypoint")
            if entry:
                found.append((path.name, entry))
    return found


def test_every_manifest_parses_and_its_entrypoint_goes_through_the_cli_parser():
    names = {p.name for p in (ROOT / "deploy").glob("*.yaml")}
    assert {"rayjob.yaml", "raycronjob.yaml", "raycluster.yaml", "runtime_env.yaml"} <= names
    kinds = {yaml.safe_load(p.read_text()).get("kind") for p in (ROOT / "deploy").glob("ray*.yaml")}
    assert kinds == {"RayJob", "RayCronJob", "RayCluster"}
    found = entrypoints()
    assert {n for n, _ in found} == {"rayjob.yaml", "raycronjob.yaml"}
    for name, entry in found:
        argv = shlex.split(entry)
        assert argv[:2] == ["python", "pipelines/protect_laion.py"], name
        args = build_parser().parse_args(["protect", *argv[2:]])  # exits on an unknown option
        engine_config(args)  # and the values are valid engine settings
        assert args.input.startswith("s3://") and args.output.startswith("s3://")
    assert "nvidia/cuda" in (ROOT / "deploy" / "Dockerfile").read_text()


def test_execution_options_reach_the_engine_config():
    args = build_parser().parse_args(["protect", "in", "out", "--preset", "paper", "--precision", "bf16",
                                      "--pgd-batch-size", "512", "--compile"])
    cfg = engine_config(args)
    assert (cfg.precision, cfg.pgd_batch, cfg.compile, cfg.batch_size) == ("bf16", 512, True, 128)
    plain = engine_config(build_parser().parse_args(["protect", "in", "out", "--preset", "paper"]))
    assert (plain.precision, plain.pgd_batch, plain.compile) == ("fp32", 128, False)  # the preset as it is


@pytest.fixture
def ray_head(tmp_path, monkeypatch):
    """A real `ray start --head` on loopback ports with token authentication, stopped afterwards."""
    import secrets

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
    gcs, dashboard = free_port(), free_port()
    while dashboard == gcs:   # the OS may hand out a just-released port again
        dashboard = free_port()
    ray = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "8",
                    "--include-dashboard", "true", "--disable-usage-stats"], check=True, capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)


def _ray_job_submit(address: str, entry: list[str]) -> str:
    """`ray job submit` (the CLI, in its own process, so it reads the token from the environment)."""
    ray = str(Path(sys.executable).parent / "ray")
    run = subprocess.run([ray, "job", "submit", "--address", address, "--", *entry], capture_output=True, text=True,
                         timeout=400)
    assert run.returncode == 0 and "succeeded" in run.stdout, (run.stdout + run.stderr)[-3000:]
    return run.stdout


def test_ray_job_submit_then_incremental_rerun(ray_head, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_split(str(inp), 80, 64, seed=4, first_index=0, per_shard=40)
    cfg = write_fast_config(tmp_path, outer_iters=1, train_steps=4)
    entry = [sys.executable, str(ROOT / "pipelines" / "protect_laion.py"), str(inp), str(out), "--config", str(cfg),
             "--num-actors", "1", "--trigger-scope", "global", "--quiet"]
    _ray_job_submit(ray_head, entry)
    assert json.loads((out / "mempipe_run.json").read_text())["shards_written"] == 2
    first = private_run(out)            # the trigger table lives in the owner's private record only
    assert first["shards_written"] == 2 and first["samples_protected"] == 80
    assert "trigger_table" not in json.loads((out / "mempipe_run.json").read_text())
    before = {p.name: p.stat().st_mtime for p in out.glob("0000*")}

    # a new crawl batch arrives: only its shard is protected, with the first run's trigger
    write_split(str(tmp_path / "batch2"), 40, 64, seed=5, first_index=500, per_shard=40)
    (tmp_path / "batch2" / "00000.tar").rename(inp / "00002.tar")
    # the nightly rerun, here in one process (the same entry point and driver; the job path is shown above)
    rerun = subprocess.run([c for c in entry if c not in ("--num-actors", "1")] + ["--no-ray"], capture_output=True,
                           text=True, timeout=600, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    second = private_run(out)
    assert second["shards_written"] == 1 and second["shards_done_before"] == 2
    assert second["trigger_table"]["global"] == first["trigger_table"]["global"]
    assert {p.name: p.stat().st_mtime for p in out.glob("0000[01]*")} == before
    new = list(iter_shard(str(out / "00002.tar")))
    private = private_meta(out)
    assert len(new) == 40 and {private[("00002", s.key)]["trigger"] for s in new} == {first["trigger_text"]["global"]}
    assert all(first["trigger_text"]["global"] not in json.dumps(s.meta["mempipe"]) for s in new)


def test_a_job_without_the_token_is_refused(ray_head, tmp_path):
    """Token auth on the real head: no token -> refused; the token from the environment -> SUCCEEDED."""
    import os

    ray = str(Path(sys.executable).parent / "ray")
    entry = [sys.executable, "-c", "print('mempipe-auth-check')"]
    # a clean HOME: no ~/.ray/auth_token to fall back on, and no token in the environment
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"} | {"HOME": str(tmp_path)}
    refused = subprocess.run([ray, "job", "submit", "--address", ray_head, "--", *entry], capture_output=True,
                             text=True, timeout=120, env=env)
    assert refused.returncode != 0
    assert "auth" in (refused.stdout + refused.stderr).lower() and "mempipe-auth-check" not in refused.stdout
    accepted = _ray_job_submit(ray_head, entry)
    assert "mempipe-auth-check" in accepted and "succeeded" in accepted.lower()


def test_manifests_enable_token_auth():
    """Every KubeRay cluster the manifests create runs with token authentication (KubeRay >= 1.5.1)."""
    specs = {"raycluster.yaml": lambda d: d["spec"], "rayjob.yaml": lambda d: d["spec"]["rayClusterSpec"],
             "raycronjob.yaml": lambda d: d["spec"]["jobTemplate"]["rayClusterSpec"]}
    for name, cluster_spec in specs.items():
        spec = cluster_spec(yaml.safe_load((ROOT / "deploy" / name).read_text()))
        assert spec["authOptions"] == {"mode": "token"}, name
        major, minor, *_ = (int(x) for x in spec["rayVersion"].split("."))
        assert (major, minor) >= (2, 52), name            # token auth exists from Ray 2.52


def test_failing_job_exits_non_zero(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "pipelines" / "protect_laion.py"), str(tmp_path / "missing"),
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "not found" in run.stderr
