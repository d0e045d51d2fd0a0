"""Store calls that outlast a transient tracking-server error: a server restarting, a proxy answering
503, a rate limit, a sqlite store locked by another process. Every call the harness makes to MLflow goes
through `RetryingClient`, which retries such errors with exponential back-off for up to
`ADAMOLE_BENCH_STORE_RETRY_SECONDS` (default 120) and then raises the last one (reported in one line as
before). Anything else (a bad request, a full disk, a read-only store) raises at once.

The atomic trial claim (`create_experiment`, harness/store/claims.py) is retried only when its request
cannot have reached the server (the connection was refused): a repeat of one the server did carry out
would find its own claim taken and wait for a trial that nobody runs.
"""

import functools
import os
import time

from rich.console import Console
from rich.markup import escape

from ...base.errors import UserError, error_line, storage_problem

TRANSIENT_CODES = ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")
# What MLflow's HTTP client and sqlite say when the server or file was briefly unavailable
NEVER_ARRIVED = ("Connection refused", "NewConnectionError", "Name or service not known", "Temporary failure in name resolution")
TRANSIENT_TEXT = (
    *NEVER_ARRIVED, "Connection reset", "Connection aborted", "RemoteDisconnected", "Read timed out", "Max retries exceeded",
    "too many 429 error", "too many 5",  # urllib3: "too many 503 error responses"
    "database is locked",  # sqlite: another process holds the write lock
)  # fmt: skip
ONCE_ONLY = ("create_experiment",)  # the claim: see the module docstring
FIRST_WAIT, LONGEST_WAIT = 0.5, 16.0  # seconds between attempts: doubling from the first to the longest


def retry_seconds() -> float:
    text = os.environ.get("ADAMOLE_BENCH_STORE_RETRY_SECONDS", "120")
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise UserError(f"ADAMOLE_BENCH_STORE_RETRY_SECONDS must be a number of seconds >= 0, got '{text}'; e.g. 120, or 0 to never retry")
    return seconds


def transient(err: Exception, call: str) -> bool:
    """Worth another attempt: a passing outage, never a problem of the request or of the disk."""
    if storage_problem(err):
        return False
    text = f"{type(err).__name__}: {err}"
    if call in ONCE_ONLY:
        return any(marker in text for marker in NEVER_ARRIVED)
    return getattr(err, "error_code", None) in TRANSIENT_CODES or any(marker in text for marker in TRANSIENT_TEXT)


class RetryingClient:
    """An MlflowClient whose every method retries transient errors (see the module docstring)."""

    def __init__(self, client, seconds: float | None = None):
        self._client = client
        self._seconds = retry_seconds() if seconds is None else seconds

    def __getattr__(self, name: str):
        method = getattr(self._client, name)
        if not callable(method):
            return method

        @functools.wraps(method)
        def call(*args, **kwargs):
            deadline, wait = time.monotonic() + self._seconds, FIRST_WAIT
            while True:
                try:
                    return method(*args, **kwargs)
                except Exception as err:
                    if not transient(err, name) or time.monotonic() + wait > deadline:
                        raise
                    if wait == FIRST_WAIT:
                        Console(stderr=True, soft_wrap=True).print(
                            f"[yellow]MLflow store call {name} failed ({escape(error_line(err))}); retrying for up to {self._seconds:.0f} s[/]"
                        )
                    time.sleep(wait)
                    wait = min(2 * wait, LONGEST_WAIT)

        return call
