"""Retries of whole-file reads and writes, with exponential backoff and jitter (tenacity).

botocore already retries single S3 requests (``standard`` mode, set in :mod:`mempipe.io.storage`);
this layer retries what botocore cannot: a connection reset in the middle of a streamed body,
an expired token refreshed by the environment, a read that stalls past its timeout. Only I/O
errors come here: a malformed shard is a format error, recorded per sample, never retried.

Each process counts its retries so that runs can report them (``retry_counts``).
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Callable, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

T = TypeVar("T")

retry_counts: Counter = Counter()  # what -> retries in this process


class StorageError(OSError):
    """An I/O failure of the storage layer (not of the data's format), after every retry."""


def attempts() -> int:
    """Whole-operation attempts (``MEMPIPE_IO_ATTEMPTS``, default 4)."""
    return max(1, int(os.environ.get("MEMPIPE_IO_ATTEMPTS", "4")))


def _is_io_error(exc: BaseException) -> bool:
    # format errors are raised as ValueError subclasses or handled by the readers; programming
    # errors (TypeError, KeyError...) must not be retried either
    return not isinstance(exc, (ValueError, TypeError, KeyError, AttributeError, NotImplementedError,
                                KeyboardInterrupt, MemoryError))


def with_retries(what: str, fn: Callable[[], T], max_wait: float | None = None) -> T:
    """``fn()`` retried on I/O errors; the last error re-raised as :class:`StorageError`."""
    wait_cap = float(os.environ.get("MEMPIPE_IO_MAX_WAIT", "20")) if max_wait is None else max_wait

    def count(state) -> None:
        retry_counts[what] += 1

    try:
        for attempt in Retrying(stop=stop_after_attempt(attempts()), retry=retry_if_exception(_is_io_error),
                                wait=wait_random_exponential(multiplier=0.2, max=wait_cap), before_sleep=count,
                                reraise=True):
            with attempt:
                return fn()
    except StorageError:
        raise
    except Exception as exc:
        if not _is_io_error(exc):
            raise
        raise StorageError(f"{what} failed after {attempts()} attempts: {type(exc).__name__}: {exc}") from exc
    raise AssertionError("unreachable")
