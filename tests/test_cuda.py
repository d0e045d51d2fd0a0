"""What only a CUDA GPU can show: the plan against the allocator's peak, and the mixed precisions there.

Skipped without CUDA; `scripts/gpu_check.sh` runs them (`-m cuda`)."""

import pytest
import torch

from adamole_bench.harness.plan.measure import plan_against_measured
from adamole_bench.harness.settings.load import load_config

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
TOLERANCE = 0.20  # the bar for the plan, as on CPU (tests/test_plan.py)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_plan_is_within_20_percent_of_the_cuda_allocator_peak(precision, checkpointing):
    overrides = ["model=smollm2-135m", "device=cuda", f"precision={precision}", "methods=[lora,mole,adamole,soft-moa,sparse-moa]"]
    config = load_config(None, [*overrides, f"train.gradient_checkpointing={str(checkpointing).lower()}"])
    for row in plan_against_measured(config):
        assert abs(row["predicted_bytes"] - row["measured_bytes"]) <= TOLERANCE * row["measured_bytes"], row
