"""One run driver, two distributors: the same input through both gives the same record and bytes."""
import json
import tarfile

import ray

from mempipe.data.demo_data import write_split
from mempipe.engine.config import preset
from mempipe.run.driver import RunRequest, run
from mempipe.run.in_process import InProcess
from mempipe.run.ray_pool import RayActorPool

# decided by the run, not by where it ran
DIFFERENT_BY_DESIGN = {"run_id", "seconds", "engine", "distribution", "output", "record"}


def without_timing(value):
    """The value with every timing and run id taken out, at any depth."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items()
                if "seconds" not in k and k not in ("time", "created", "run_id", "fitted_by_run")}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def members(out) -> dict:
    """(shard, member name) -> bytes for every protected shard, run ids taken out of the json members."""
    found = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as f:
            for m in f.getmembers():
                data = f.extractfile(m).read()
                if m.name.endswith(".json"):
                    data = json.dumps(without_timing(json.loads(data)), sort_keys=True).encode()
                found[(tar.name, m.name)] = data
    return found


def test_in_process_and_ray_give_the_same_record_field_by_field_and_the_same_bytes(tmp_path):
    inp = tmp_path / "in"
    write_split(str(inp), 300, 32, seed=1, first_index=0, per_shard=100)
    cfg = preset("cpu-tiny").with_overrides(outer_iters=1, train_steps=4, pgd_steps=2, hotflip_iters=1, candidates=4,
                                            batch_size=64, unit_size=128, trigger_scope="global")
    records = {}
    try:
        for name, distributor in (("local", InProcess("cpu")), ("ray", RayActorPool(num_actors=2))):
            records[name] = run(RunRequest(str(inp), str(tmp_path / name), cfg, provenance="full"), distributor).to_dict()
    finally:
        ray.shutdown()   # a Ray left running in this process would be stopped under a later test's feet
    local, on_ray = records["local"], records["ray"]
    assert local["engine"] == "local" and on_ray["engine"] == "ray" and local["shards_written"] == 3
    assert set(local) == set(on_ray)
    for field in sorted(set(local) - DIFFERENT_BY_DESIGN):   # each output's own path read as OUT
        same = [json.dumps(without_timing(r[field]), sort_keys=True).replace(str(tmp_path / name), "OUT")
                for name, r in records.items()]
        assert same[0] == same[1], field
    local_bytes, ray_bytes = members(tmp_path / "local"), members(tmp_path / "ray")
    assert local_bytes.keys() == ray_bytes.keys() and len(local_bytes) == 3 * 100 * 3
    assert [k for k in local_bytes if local_bytes[k] != ray_bytes[k]] == []
