"""`adamole-bench plan`: the estimate from the model's skeleton against the measured training peak, and bad input."""

import pytest

from adamole_bench.harness.model.loading import byte_level_tokenizer, tiny_llama
from adamole_bench.harness.plan.measure import plan_against_measured
from adamole_bench.harness.plan.memory import parse_memory, plan
from adamole_bench.harness.settings.load import load_config

METHODS = "[lora,mole,adamole,soft-moa,sparse-moa]"
# The bar. What varies between estimate and measurement: the allocator's transients inside one op
# (the profiler books an op's own allocations at its start) and the mixtures' sparse dropout, not counted.
TOLERANCE = 0.20


@pytest.mark.integration
@pytest.mark.parametrize("checkpointing", [False, True])
def test_plan_is_within_20_percent_of_the_measured_training_peak_on_tiny_llama(checkpointing):
    config = load_config(
        None, ["model=tiny-llama", "precision=fp32", f"methods={METHODS}", f"train.gradient_checkpointing={str(checkpointing).lower()}"]
    )
    rows = plan_against_measured(config)
    assert [row["method"] for row in rows] == config.methods
    for row in rows:
        assert abs(row["predicted_bytes"] - row["measured_bytes"]) <= TOLERANCE * row["measured_bytes"], row
    for estimate in plan(config):
        assert estimate.activations_checkpointed < estimate.activations
        assert estimate.optimizer == 2 * estimate.adapter == 2 * estimate.gradients


def test_plan_reads_a_local_config_json_and_needs_no_weights(tmp_path):
    tiny_llama(len(byte_level_tokenizer())).config.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.safetensors"))
    local, embedded = (plan(load_config(None, [f"model={name}", "methods=[adamole]", "train.max_length=32"]))[0] for name in (tmp_path, "tiny-llama"))
    assert local == embedded and local.adapter > 0 and local.optimizer == 2 * local.adapter


def test_memory_sizes_read_as_people_write_them():
    assert parse_memory("24GiB") == 24 * 2**30 and parse_memory("80 GB") == 80 * 10**9
    assert parse_memory("512M") == 512 * 10**6 and parse_memory("1.5gi") == int(1.5 * 2**30) and parse_memory("1000") == 1000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device-memory", "24XB"], "--device-memory '24XB' is not a size"),
        (["--device-memory", "GiB"], "is not a size"),
        (["train.bogus=1"], "unknown setting 'train.bogus'"),
        (["model=nobody/no-such-model"], "plan needs the config.json of model 'nobody/no-such-model'"),
    ],
)
def test_plan_bad_input_is_one_line_and_exit_2(cli, args, message):
    result = cli("plan", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_plan_prints_every_method_and_whether_it_fits(cli):
    result = cli("plan", "--device-memory", "1MiB", "model=tiny-llama", "methods=[lora,adamole]", "train.max_length=32")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines() if line.split()[:1] in (["lora"], ["adamole"])}
    assert list(rows) == ["lora", "adamole"] and all(len(row) == 10 for row in rows.values())
    assert all(row[-1] == "no/no" for row in rows.values())  # 1 MiB holds neither, checkpointed or not
