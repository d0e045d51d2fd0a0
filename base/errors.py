"""User-facing errors and exit codes: one line that names the fix; the CLI turns them into exit code 2."""

import difflib
import errno
from collections.abc import Iterable

# Every exit code of `adamole-bench` (README "Exit codes" lists them too); success is 0.
EXIT_CRASHED = 1  # a trial crashed (a harness bug: its traceback is printed), or `check` found a regression
EXIT_USER = 2  # bad input or environment: one line naming the fix, before any work where it can be known
EXIT_DIVERGED = 3  # a trial's loss or gradient norm became NaN/inf (the run is FAILED, never counted)
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT): the current trial and the sweep are FAILED, finished trials kept
# A stop signal exits 128 + its number: 143 for SIGTERM (timeout, SLURM, docker stop), 138 for SIGUSR1 (SLURM's warning)


class UserError(Exception):
    """Bad input or a missing prerequisite the user can fix (never a bug in the harness)."""


class Diverged(Exception):
    """Training produced a non-finite loss or gradient norm; the trial is stopped and recorded FAILED."""

    def __init__(self, step: int, what: str, value: float):
        super().__init__(f"diverged at step {step}: {what} is {value} (lower train.lr, raise train.warmup_steps or check the data)")
        self.step = step


class Pruned(Exception):
    """A search trial's intermediate validation score told the pruner to stop it (harness/tune/): recorded
    FAILED with failure `pruned`, never counted as a result, and not an error of the sweep."""


def unknown(kind: str, name: str, valid: Iterable[str], hint: str = "") -> UserError:
    """`unknown method 'adamol' (did you mean 'adamole'?); valid: lora, mole, ...`."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    suggestion = f" (did you mean '{close[0]}'?)" if close else ""
    tail = f"; {hint}" if hint else ""
    return UserError(f"unknown {kind} '{name}'{suggestion}; valid: {', '.join(valid)}{tail}")


def storage_problem(err: BaseException) -> str | None:
    """'disk full (...)' or 'read-only file system (...)' when an error, or what caused it, is the disk's doing."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"disk full ({seen.filename or seen.strerror})"
        if isinstance(seen, OSError) and seen.errno == errno.EROFS:
            return f"read-only file system ({seen.filename or seen.strerror})"
        text = str(seen)
        if "database or disk is full" in text:
            return "disk full (the MLflow database could not grow)"
        if "attempt to write a readonly database" in text:
            return "the MLflow database is read-only"
        seen = seen.__cause__ or seen.__context__
    return None


def error_line(err: BaseException, last: bool = False) -> str:
    """`Type: message` in one line of at most 200 characters, for a message that must stay one line.

    The first non-empty line of the message, or with `last` the last one: a Ray task's error carries
    the remote traceback in its text, and the error itself comes at the end."""
    lines = [line for line in str(err).splitlines() if line.strip()] or [""]
    return f"{type(err).__name__}: {(lines[-1] if last else lines[0])[:200]}"
