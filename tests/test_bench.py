"""The bench: its loop reference is exact, and one run reports every method with sane numbers."""

import json

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from adamole_bench.cli import app
from adamole_bench.harness.bench.loop import loop_over_experts, loop_reference
from adamole_bench.harness.bench.suite import render
from adamole_bench.harness.model.loading import tiny_llama
from adamole_bench.methods.experts import LoraExperts
from adamole_bench.tests import toy_moe  # noqa: F401  (registers the test-only "toy-moe" mixture)


def test_loop_reference_matches_vectorized_core_forward_and_backward():
    torch.manual_seed(0)
    experts = LoraExperts(in_features=16, out_features=12, num_experts=4, rank=3, scaling=0.5)
    torch.nn.init.normal_(experts.lora_B)
    x = torch.randn(2, 5, 16)
    weights = torch.rand(2, 5, 4) * (torch.rand(2, 5, 4) > 0.5)  # sparse routing: some pairs skipped
    weights[..., 2] = 0  # one expert selected by no token
    weights.requires_grad_(True)

    outputs, grads = [], []
    for forward in (experts.forward, lambda x, w: loop_over_experts(experts, x, w)):
        y = forward(x, weights)
        y.square().sum().backward()
        outputs.append(y.detach())
        grads.append([t.grad.clone() for t in (experts.lora_A, experts.lora_B, weights) if t.grad is not None])
        assert len(grads[-1]) == 3
        for t in (experts.lora_A, experts.lora_B, weights):
            t.grad = None
    assert outputs[0].abs().max() > 0
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    (a, b, w), (loop_a, loop_b, loop_w) = grads
    torch.testing.assert_close(a, loop_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b, loop_b, atol=1e-5, rtol=1e-5)
    # A zero routing weight is masked out upstream (top-k scatter, threshold mask): only selected
    # pairs carry gradient to the router, and those must agree.
    selected = weights.detach() != 0
    torch.testing.assert_close(w[selected], loop_w[selected], atol=1e-5, rtol=1e-5)


def test_loop_reference_context_restores_the_vectorized_forward():
    model = torch.nn.ModuleDict({"experts": LoraExperts(8, 8, 2, 2, 1.0)})
    vectorized = LoraExperts.forward
    with loop_reference(model):
        assert LoraExperts.forward is loop_over_experts
    assert LoraExperts.forward is vectorized


@pytest.mark.parametrize("method", ["adamole", "sparse-moa"])
def test_loop_reference_covers_methods_that_reach_the_core_through_subclasses(method):
    """MoA's GatedLora calls the core as super().forward(x, gate): the loop must take that path too."""
    from adamole_bench.harness.model.loading import tiny_llama
    from adamole_bench.methods.registry import build_method

    torch.manual_seed(0)
    model = build_method(method).apply(tiny_llama()).eval()
    for module in model.modules():
        if isinstance(module, LoraExperts):
            torch.nn.init.normal_(module.lora_B, std=0.1)
    tokens = torch.randint(3, 200, (2, 12))
    with torch.no_grad():
        vectorized = model(tokens).logits
        with loop_reference(model):
            looped = model(tokens).logits
    torch.testing.assert_close(looped, vectorized, atol=1e-4, rtol=1e-4)


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore")
def test_bench_command_reports_every_method_and_logs_a_bench_run(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAMOLE_BENCH_RUNS", str(tmp_path / "runs"))
    output = tmp_path / "bench.json"
    args = [
        "bench",
        "--methods",
        "lora,toy-moe,base",
        "--steps",
        "2",
        "--precisions",
        "fp32",
        "--eval-task",
        "fruit_or_color",
        "--eval-limit",
        "6",
        "--output",
        str(output),
        "--profile",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    results = json.loads(output.read_text())
    rows = {row["label"]: row for row in results["training"] if not row.get("layer")}
    held_weights_mb = sum(p.numel() * p.element_size() for p in tiny_llama().parameters()) / 2**20
    assert set(rows) == {"lora", "toy-moe", "lora r=16", "toy-moe loop-ref"}  # base trains nothing: no row
    for row in rows.values():
        assert len(row["step_ms_all"]) == 2 and row["step_ms_median"] > 0 and row["tokens_per_second"] > 0
        assert row["saved_activations_mb"] > 0
        assert row["peak_mb"] >= held_weights_mb  # the row alone holds at least the base's weights
    assert rows["toy-moe"]["peak_ratio_to_baseline"] == pytest.approx(rows["toy-moe"]["peak_mb"] / rows["lora r=16"]["peak_mb"])
    console = Console(width=300, record=True)
    console.print(*render(results))
    printed = console.export_text()
    assert "peak MB" in printed and "peak ratio" in printed  # beside the step time, with its ratio to LoRA(N·r)
    assert rows["toy-moe"]["baseline"] == "lora r=16" and rows["toy-moe loop-ref"]["baseline"] == "toy-moe"
    assert rows["lora r=16"]["trainable_parameters"] < rows["toy-moe"]["trainable_parameters"]  # + routers
    assert rows["toy-moe loop-ref"]["outputs_match"]
    assert set(results["verdicts"]) == {"toy-moe"}
    assert results["precision_pairs"] == [] and results["bf16_speedups"] == {}  # fp32 alone: nothing to pair
    for row in rows.values():  # --profile: one step's op time by category
        profile = row["profile"]
        assert sum(profile["share"].values()) == pytest.approx(1.0) and profile["share"]["matmul"] > 0
        assert profile["matmul_gflop"] > 0
    assert results["matmul_peak_gflop_per_second"]["fp32"] > 0
    # the loop's per-expert nonzero/gather/index_add calls show up; the vectorized core has none of its own
    loop_calls, vectorized_calls = rows["toy-moe loop-ref"]["profile"]["calls"], rows["toy-moe"]["profile"]["calls"]
    assert loop_calls["gather/sync"] > vectorized_calls.get("gather/sync", 0) + 8

    evaluation = results["evaluation"]
    assert evaluation["docs"] == 6 and evaluation["requests"] == 12  # two choices per doc
    assert "error" not in evaluation["lm_eval_cli"], evaluation["lm_eval_cli"]
    assert evaluation["lm_eval_cli"]["acc"] == pytest.approx(evaluation["in_memory"]["acc"])  # same model, same docs

    from adamole_bench.harness.store.tracking import Tracker

    tracker = Tracker("adamole-bench")
    runs = tracker.client.search_runs([tracker.experiment_id], "tags.kind = 'bench'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    logged = runs[0].data.metrics  # the median ratio with the range of the rounds it came from
    assert [k for k in logged if k.startswith("ratio_min/")] and len([k for k in logged if k.startswith("ratio_")]) == 2 * len(
        [k for k in logged if k.startswith("ratio/")]
    )


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore")
def test_bench_compares_dropout_modes_precisions_layers_and_saved_bytes(tmp_path, monkeypatch):
    """Both dropout modes of a mixture, fp32 against bf16, one layer alone, saved bytes vs LoRA(N·r)."""
    monkeypatch.setenv("ADAMOLE_BENCH_RUNS", str(tmp_path / "runs"))
    output = tmp_path / "bench.json"
    args = [
        "bench",
        "--methods",
        "mole",
        "--steps",
        "2",
        "--precisions",
        "fp32,bf16",
        "--eval-task",
        "none",
        "--output",
        str(output),
        "mole.num_experts=4",
        "mole.rank=16",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads(output.read_text())
    rows = {row["label"]: row for row in results["training"]}
    for precision in ("fp32", "bf16"):
        faithful, shared = rows[f"mole [{precision}]"], rows[f"mole dropout_mode=shared [{precision}]"]
        assert faithful["dropout_mode"] == "per_expert" and shared["dropout_mode"] == "shared"
        assert faithful["baseline"] == shared["baseline"] == f"lora r=16 p=0.05 [{precision}]"
        assert faithful["saved_ratio_to_baseline"] > 0 and rows[f"mole [{precision}] loop-ref"]["outputs_match"]
        assert f"mole dropout_mode=shared [{precision}] loop-ref" not in rows  # the loop is the per-expert reference
        layer = rows[f"mole [{precision}] loop-ref (one layer)"]
        assert layer["layer"] and layer["baseline"] == f"mole [{precision}] (one layer)" and layer["ratio_to_baseline"] > 0
        verdict = results["verdicts"][f"mole [{precision}]"]
        assert {"vs_lora", "saved_vs_lora", "layer_loop_speedup", "step_loop_speedup"} <= set(verdict)
        low, high = verdict["vs_lora_range"]  # the per-round ratios of the two timed rounds
        steps, lora_steps = faithful["step_ms_all"], rows[faithful["baseline"]]["step_ms_all"]
        assert sorted([steps[0] / lora_steps[0], steps[1] / lora_steps[1]]) == pytest.approx([low, high])
        assert verdict["vs_lora"] == pytest.approx((low + high) / 2)
        assert verdict["lora_target"] in {"met", "missed", "unclear"} and verdict["loop_target"] in {"met", "missed", "unclear"}
        assert results["verdicts"][f"mole dropout_mode=shared [{precision}]"]["vs_lora_limit"] == 1.1
    # fp32 against bf16 is timed in pairs, per requested method (not read off the two phases)
    (pair,) = results["precision_pairs"]
    assert pair["method"] == "mole" and pair["precision"] == "bf16" and pair["against"] == "fp32"
    fp32_steps, bf16_steps = pair["step_ms_all"]["fp32"], pair["step_ms_all"]["bf16"]
    assert sorted(a / b for a, b in zip(fp32_steps, bf16_steps)) == pytest.approx(pair["speedup_range"])
    speedup = results["bf16_speedups"]["mole"]
    assert speedup["speedup"] == pytest.approx(sum(pair["speedup_range"]) / 2) and speedup["target"] in {"met", "missed", "unclear"}


def test_a_target_is_met_only_when_every_round_meets_it():
    from adamole_bench.harness.bench.suite import judged
    from adamole_bench.harness.bench.training import paired_ratios

    assert judged([1.1, 1.25], 1.3) == "met" and judged([1.35, 1.6], 1.3) == "missed"
    assert judged([1.2, 1.4], 1.3) == "unclear"  # one round under, one over: no verdict
    assert judged([2.3, 2.9], 2.0, at_least=True) == "met" and judged([1.9, 2.1], 2.0, at_least=True) == "unclear"
    # rounds are paired: a slow round slows both rows and leaves their ratio alone
    paired = paired_ratios([1.2, 2.4, 1.3], [1.0, 2.0, 1.0])
    assert paired["ratio_to_baseline"] == pytest.approx(1.2) and paired["ratio_range"] == pytest.approx([1.2, 1.3])
    with pytest.raises(ValueError):
        paired_ratios([1.0, 2.0], [1.0])  # rounds must line up
