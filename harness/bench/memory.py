"""The bench's memory probes, on one step of a row after its warmup: the bytes autograd saves for
backward (its activations) and the row's peak as if it ran alone.

The rows share the base's weights and coexist in one process, so the process's own peak says nothing
about one row. A row's peak is what it holds between steps (its weights, adapter and optimizer state,
each storage once, the shared weights included) plus how far one step raises memory above that: the
allocator's peak on CUDA, the resident set sampled every millisecond on CPU (a small model's step
takes milliseconds; freed heap pages are returned first, harness/train/loop.py PeakMemory).
"""

from contextlib import contextmanager

import torch

from ..train.loop import PeakMemory

PROBE_INTERVAL = 0.001  # seconds between resident-set samples during the probed step


def probe_memory(row, batch: dict, device: torch.device) -> tuple[float, float]:
    """(saved activations MB, peak MB) of one step of `row`."""
    held = held_mb(row)
    sizes: list[int] = []
    with PeakMemory(device, PROBE_INTERVAL) as memory, count_saved_activations(sizes):
        row.step(batch)
    return sum(sizes) / 2**20, held + memory.metrics()["memory/peak_delta_mb"]


def held_mb(row) -> float:
    """What a row holds between steps, each storage once: weights, adapter and optimizer state."""
    optimizer_state = (t for state in row.optimizer.state.values() for t in state.values() if torch.is_tensor(t))
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (*row.model.parameters(), *row.model.buffers(), *optimizer_state)
    }
    return sum(storages.values()) / 2**20


@contextmanager
def count_saved_activations(into: list[int]):
    """Sum the bytes of distinct tensors autograd saves for backward: the activation memory of a step."""
    seen: set[int] = set()

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            into.append(storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield
