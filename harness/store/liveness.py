"""Is the process behind a RUNNING run still alive? Who runs it, a heartbeat, and SIGTERM/SIGUSR1 as Ctrl-C.

Every run the harness creates carries the process that runs it (tags `host`, `pid`, `process`) and a
`heartbeat` tag (Unix time) that a background thread refreshes every `ADAMOLE_BENCH_HEARTBEAT_SECONDS`
(default 30), so training steps, a long lm-eval pass and artifact uploads all keep it fresh. A RUNNING
run is *stale* (its process is gone and it will never end by itself) when

1. its process ran on this machine (same boot and pid namespace) and no longer exists (or is a zombie,
   or the pid now belongs to a process started later), or
2. it ran elsewhere and its last heartbeat is older than `ADAMOLE_BENCH_STALE_AFTER_SECONDS`
   (default 600; machines sharing a store need clocks that agree to well within that).

A process alive on this machine is never stale, however old its heartbeat: a stall is not a death.
"""

import ctypes
import functools
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psutil

from ...base.errors import EXIT_INTERRUPTED, UserError

DEFAULT_HEARTBEAT_SECONDS = 30.0
DEFAULT_STALE_AFTER_SECONDS = 600.0


def _seconds(variable: str, default: float) -> float:
    text = os.environ.get(variable)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise UserError(f"{variable}={text!r} must be a positive number of seconds (unset it for the default {default:.0f})")
    return value


def heartbeat_seconds() -> float:
    return _seconds("ADAMOLE_BENCH_HEARTBEAT_SECONDS", DEFAULT_HEARTBEAT_SECONDS)


def stale_after_seconds() -> float:
    return _seconds("ADAMOLE_BENCH_STALE_AFTER_SECONDS", DEFAULT_STALE_AFTER_SECONDS)


# --- which process runs a run ---------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


@functools.cache
def machine_id() -> str:
    """Host name, boot id and pid namespace: pids can only be compared between equal machine ids."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}:{_read('/proc/sys/kernel/random/boot_id')}:{namespace}"


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) from /proc, or None without /proc."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 is the state, field 22 the start time
    return fields[0], fields[19]


def process_tags() -> dict[str, str]:
    """Who runs a run: `process` is what liveness checks compare, `host` and `pid` are for people."""
    pid = os.getpid()
    started = (_stat(pid) or ("", ""))[1]
    return {"host": socket.gethostname(), "pid": str(pid), "process": f"{machine_id()}|{pid}|{started}"}


def process_alive(process: str) -> bool | None:
    """Whether the process named by a `process` tag still runs; None when it ran on another machine."""
    parts = process.rsplit("|", 2)
    if len(parts) != 3 or parts[0] != machine_id() or not parts[1].isdigit():
        return None
    pid, started = int(parts[1]), parts[2]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    stat = _stat(pid)
    if stat is None:
        return True
    state, now_started = stat
    return state != "Z" and (not started or now_started == started)


def staleness(tags: dict[str, str], started_ms: int, now: float | None = None) -> str | None:
    """Why a RUNNING run (or a claim) is stale, or None while its process may still be at work."""
    process = tags.get("process")
    if process:
        alive = process_alive(process)
        if alive is False:
            return f"its process died (pid {tags.get('pid')} on {tags.get('host')})"
        if alive:
            return None
    try:
        last = float(tags.get("heartbeat") or started_ms / 1000)
    except ValueError:
        last = started_ms / 1000
    age, limit = (now or time.time()) - last, stale_after_seconds()
    if age > limit:
        where = f" (pid {tags.get('pid')} on {tags.get('host')})" if process else ""
        return f"no heartbeat for {age:.0f} s{where}, more than ADAMOLE_BENCH_STALE_AFTER_SECONDS={limit:.0f}"
    return None


# --- the heartbeat thread -------------------------------------------------------------------------


class Heartbeat:
    """Calls `beat(run_ids, now)` for the registered runs every heartbeat_seconds(), from a daemon thread.

    A beat that fails (store briefly locked or unreachable, disk full) is skipped: the next one, or the
    stale-run rules above, take over.
    """

    def __init__(self, beat: Callable[[list[str], float], None]):
        self._beat = beat
        self._runs: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, run_id: str) -> None:
        with self._lock:
            self._runs.append(run_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, args=(heartbeat_seconds(),), name="adamole-heartbeat", daemon=True)
                self._thread.start()

    def remove(self, run_id: str) -> None:
        with self._lock:
            self._runs.remove(run_id)
            if not self._runs:
                self._wake.set()  # let the thread end now rather than after its next interval

    def _loop(self, interval: float) -> None:
        while True:
            self._wake.wait(interval)
            with self._lock:
                self._wake.clear()
                if not self._runs:
                    self._thread = None  # the next add() starts a new thread
                    return
                runs = list(self._runs)
            try:
                self._beat(runs, time.time())
            except Exception:  # noqa: BLE001 - a missed beat is harmless, a dead thread is not
                continue


# --- signals --------------------------------------------------------------------------------------


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # SIGUSR1: SLURM's warning before the time limit (`--signal=B:USR1@120`)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGUSR1 (timeout, SLURM, `docker stop`, systemd): unwinds like Ctrl-C, so every run ends
    FAILED; the exit code is 128 + the signal's number (143, 138), what a shell and SLURM report."""

    def __init__(self, signum: int = signal.SIGTERM):
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(f"terminated by {self.signal_name}")


def exit_code(interrupt: KeyboardInterrupt) -> int:
    return getattr(interrupt, "exit_code", EXIT_INTERRUPTED)


_deferring: list[list[int]] = []  # one list per open `signals_deferred` block: the stop signals it noted


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn the first SIGTERM/SIGUSR1 into `Terminated` (inside `signals_deferred`: note it); a second one
    during cleanup kills at once (default action). A rank that torchrun started notes every stop signal
    inside `signals_deferred`: it may get one twice (SLURM signals every process of a job step, and torchrun
    forwards its own to each rank), and torchrun's shutdown timeout kills a rank that does not stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    torchrun_rank = "TORCHELASTIC_RUN_ID" in os.environ

    def handler(signum, frame):
        if _deferring and (not _deferring[-1] or torchrun_rank):
            _deferring[-1].append(signum)  # the block stops itself at its next safe point
            return
        raise terminated(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


def terminated(signum: int) -> Terminated:
    """The interrupt for a stop signal; from now on another one kills at once (the default action)."""
    if threading.current_thread() is threading.main_thread():
        for stop in STOP_SIGNALS:
            signal.signal(stop, signal.SIG_DFL)
    return Terminated(signum)


@contextmanager
def signals_deferred() -> Iterator[Callable[[], int | None]]:
    """While a block must not be cut mid-way (a training step): the first stop signal is only noted, and
    the block polls the function yielded (the signal's number, or None) to stop at a safe point, e.g.
    after saving a checkpoint. A second signal interrupts at once. Without `sigterm_as_interrupt`
    around it (a thread, a library caller) signals keep their usual action."""
    noted: list[int] = []
    _deferring.append(noted)
    try:
        yield lambda: noted[0] if noted else None
    finally:
        _deferring.pop()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM if we are SIGKILLed
    except (OSError, AttributeError):
        pass


def run_supervised(cmd: list[str], grace_seconds: float = 20.0) -> int:
    """Run a server (e.g. `mlflow ui`) until it exits or we get Ctrl-C/SIGTERM, then stop everything it started.

    The child gets its own session, so its workers share one process group; on a signal the whole group and
    every descendant found (even one that left the group) get SIGTERM, then SIGKILL after `grace_seconds`.
    """
    child = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent)  # noqa: PLW1509 - one prctl call, before any thread runs in the child
    try:
        with sigterm_as_interrupt():
            return child.wait()
    except KeyboardInterrupt:
        stop_tree(child.pid, grace_seconds)
        raise
    finally:
        if child.poll() is None:  # any other way out: never leave the server behind
            stop_tree(child.pid, grace_seconds)


def stop_tree(pid: int, grace_seconds: float) -> None:
    """SIGTERM a process, its process group and all its descendants; SIGKILL what is left after the grace."""

    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        pass
    for process in tree:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace_seconds)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
