"""Every result file says which code and which command wrote it, and names no machine's paths."""
import json
from pathlib import Path

import pytest

from mempipe_research.results import ABSOLUTE_PREFIXES, relative, write_result

RESULTS = Path(__file__).resolve().parents[1] / "results"


def strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


@pytest.mark.parametrize("path", sorted(RESULTS.rglob("*.json")), ids=lambda p: str(p.relative_to(RESULTS)))
def test_each_result_file_records_its_commit_and_command_and_no_absolute_path(path):
    body = json.loads(path.read_text())
    stamp = body["provenance"]
    assert len(stamp["commit"].split("-")[0]) == 40
    assert stamp["command"] or stamp["older_version"]       # an older file says so
    assert [s for s in strings(body) if s.startswith(ABSOLUTE_PREFIXES)] == []


def test_write_result_stamps_and_makes_paths_relative(tmp_path):
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "r.json"
    write_result(out, {"data": str(root / "bench" / "work" / "x"), "spec": f"{root}/a.tar::{root}/b.tar",
                       "elsewhere": "/tmp/pytest-1/run/out"}, argv=[str(root / "bench" / "demo.py"), "--quick"])
    body = json.loads(out.read_text())
    assert body["data"] == "bench/work/x" and body["spec"] == "a.tar::b.tar"
    assert body["elsewhere"] == "<elsewhere>/run/out"
    assert body["provenance"]["command"] == "python bench/demo.py --quick"
    assert relative({"n": 3, "s": "plain"}) == {"n": 3, "s": "plain"}


def test_a_checkout_under_an_unusual_prefix_is_still_made_relative():
    root = Path("/check/work/main")
    body = {"a": "/check/work/main/bench/work/x", "s": "/check/work/main/a.tar::/check/work/main/b.tar",
            "other": "/checkout/x"}
    assert relative(body, root) == {"a": "bench/work/x", "s": "a.tar::b.tar", "other": "/checkout/x"}
