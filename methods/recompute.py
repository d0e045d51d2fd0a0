"""Whether a forward is gradient checkpointing's replay of one already run.

Under `train.gradient_checkpointing` each decoder layer runs a second time in backward to rebuild its
activations. What a forward records beside its output (the load-balancing loss kept on an adapter,
expert statistics) must be recorded by the first run only; the replay recomputes the same values.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_replaying: ContextVar[bool] = ContextVar("replaying", default=False)


def replaying() -> bool:
    return _replaying.get()


@contextmanager
def replay(active: bool) -> Iterator[None]:
    token = _replaying.set(active)
    try:
        yield
    finally:
        _replaying.reset(token)
