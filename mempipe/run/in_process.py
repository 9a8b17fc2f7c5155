"""The in-process distributor: the fit and every window in this process, one after another."""
from __future__ import annotations

import os
from typing import Any, Iterator

import torch

from .fit import FitRequest, FitState, run_fit
from .windows import ShardResult, WindowTask, protect_window


class InProcess:
    engine = "local"

    def __init__(self, device: str | None = None) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.state: FitState | None = None

    def fit(self, request: FitRequest) -> dict[str, Any]:
        summary, self.state = run_fit(request, self.device)
        return summary

    def protect(self, windows: list[list[str]], task: WindowTask) -> Iterator[ShardResult]:
        for urls in windows:
            yield from protect_window(urls, self.state, task, self.device)

    def describe(self, windows: int) -> dict[str, Any]:
        return {"device": self.device, "threads": {"torch": torch.get_num_threads(), "processes": 1,
                                                   "cores": os.cpu_count()}}


def protect(input_url: str, output_url: str, cfg, image_format: str = "png", device: str | None = None):
    """Protect a folder (or bucket prefix) in this process with the defaults of everything else:
    the shortest way in for scripts. Returns the :class:`~mempipe.run.driver.RunRecord`."""
    from .driver import RunRequest, run

    return run(RunRequest(input_url, output_url, cfg, image_format), InProcess(device))
