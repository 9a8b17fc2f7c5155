"""The console of ``mempipe protect`` on Ray: one progress bar of our own, Ray quiet unless asked.

Ray Data logs an operator table every few seconds when stdout is not a terminal, Ray Core
prints INFO lines at start-up, and worker logs are forwarded to the driver. None of that
tells a user how far the run is. By default all of it is off and one tqdm bar shows shards
done, samples protected and failed, samples per second, time left and the current phase;
``--verbose`` brings Ray's own output back.
"""
from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm


def quiet_ray(verbose: bool) -> None:
    """Ray Data's progress tables and start-up prints, and Ray's INFO logs, only when verbose."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.enable_operator_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    level = logging.INFO if verbose else logging.ERROR
    for name in ("ray", "ray.data"):   # ray.data configures its own logger; its children inherit
        logging.getLogger(name).setLevel(level)


class RunProgress:
    """Shards done (total known up front), with samples and rate in the postfix."""

    def __init__(self, shards: int, enabled: bool = True) -> None:
        self.started = time.time()
        self.protected = self.failed = 0
        self.bar = tqdm(total=shards, unit="shard", desc="planning", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, mininterval=1.0)

    def phase(self, name: str) -> None:
        self.bar.set_description_str(name)

    def total(self, shards: int) -> None:
        """The shards to do, once planning knows them."""
        self.bar.reset(total=shards)

    def shard_done(self, protected: int, failed: int) -> None:
        self.protected += protected
        self.failed += failed
        rate = self.protected / max(time.time() - self.started, 1e-9)
        self.bar.set_postfix_str(f"protected={self.protected} failed={self.failed} {rate:.1f} samples/s")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
