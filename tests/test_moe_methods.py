"""MoLE / AdaMoLE against a slow, literal per-token reference of the spec formulas (§3–5).

The reference below loops over tokens and experts with separate A_i, B_i, exactly as the
formulas read; the vectorised implementation must match it in fp32 (outputs, gradients of
A, B, gate and threshold, aux loss, selection counts).
"""

import json

import pytest
import torch
from torch import nn

from adamole_bench.base.errors import UserError
from adamole_bench.harness.model.loading import load_base_model, tiny_llama
from adamole_bench.methods import catalog, registry
from adamole_bench.methods.experts import LoraExperts
from adamole_bench.methods.moe_lora import AdaptiveThresholdRouter, MoeLoraAdapter, moe_adapters
from adamole_bench.methods.registry import ADAPTER_CONFIG, Method, build_method, register
from adamole_bench.methods.routing import Routing, load_balancing_loss

D_IN, D_OUT, EXPERTS, TOKENS = 12, 10, 4, 24


def reference_forward(x, adapter: MoeLoraAdapter, *, top_k=None, threshold=None, max_threshold=None):
    """Literal spec: per token softmax → selection → weights → Σ w_i s B_i A_i x; aux N·Σ f_i P_i."""
    experts, router = adapter.experts, adapter.router
    n, r, s = experts.num_experts, experts.rank, experts.scaling
    a_mats = experts.lora_A.view(n, r, -1)
    b_mats = [experts.lora_B[:, i * r : (i + 1) * r] for i in range(n)]
    outputs, counts = [], [0] * n
    score_sums: list[float | torch.Tensor] = [0.0] * n
    for t in range(x.shape[0]):
        p = torch.softmax(router.gate.weight @ x[t], dim=0)
        scores = p
        if top_k is not None:
            values, indices = torch.topk(p, top_k)
            chosen = [(int(i), v) for i, v in zip(indices, values)]
        elif threshold is not None:
            chosen = [(i, p[i]) for i in range(n) if p[i] >= threshold]
        else:
            assert isinstance(router, AdaptiveThresholdRouter)
            tau = torch.sigmoid(router.threshold.weight[0] @ x[t] + router.threshold.bias[0]) * max_threshold
            scores = p - tau
            chosen = [(i, scores[i]) for i in range(n) if scores[i] >= 0]
        total = sum(v for _, v in chosen) if chosen else None
        if total is None or float(total.detach()) == 0.0:
            total = 1.0
        y = torch.zeros(experts.lora_B.shape[0])
        for i, v in chosen:
            y = y + (v / total) * s * (b_mats[i] @ (a_mats[i] @ x[t]))
            counts[i] += 1
        outputs.append(y)
        score_sums = [score_sums[i] + scores[i] for i in range(n)]
    tokens = x.shape[0]
    aux = n * sum((counts[i] / tokens) * (score_sums[i] / tokens) for i in range(n))
    return torch.stack(outputs), aux, torch.tensor(counts, dtype=torch.float32)


class OneLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(D_IN, D_OUT)

    def forward(self, x):
        return self.q_proj(x)


def build(method: str, gate_scale: float = 3.0, seed: int = 0, **options):
    """One adapted linear with noisy B (non-zero adapter) and a sharper gate (varied selections)."""
    torch.manual_seed(seed)
    model = build_method(method, {"num_experts": EXPERTS, "rank": 2 * EXPERTS, "dropout": 0.0, "target_modules": ["q_proj"], **options}).apply(
        OneLinear()
    )
    adapter = model.get_submodule("q_proj.adapter.default")
    assert isinstance(adapter, MoeLoraAdapter)
    with torch.no_grad():
        adapter.experts.lora_B.normal_(0.0, 0.5)
        adapter.router.gate.weight.mul_(gate_scale)
    return model, adapter


def grads(adapter: MoeLoraAdapter) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in adapter.named_parameters():
        assert p.grad is not None, name
        out[name] = p.grad.clone()
    adapter.zero_grad()
    return out


CASES = [
    ("mole", {"top_k": 2}, {"top_k": 2}),
    ("mole", {"top_k": 1}, {"top_k": 1}),
    ("mole", {"threshold": 0.2}, {"threshold": 0.2}),
    ("adamole", {}, {"max_threshold": 1 / EXPERTS}),
    ("adamole", {"max_threshold": 0.45}, {"max_threshold": 0.45}),
]


@pytest.mark.parametrize("method,options,rule", CASES, ids=[f"{m}-{o}" for m, o, _ in CASES])
def test_matches_slow_reference(method, options, rule):
    model, adapter = build(method, **options)
    model.train()  # dropout is 0, so train mode is deterministic and computes the aux loss
    torch.manual_seed(1)
    x = torch.randn(TOKENS, D_IN)
    cotangent = torch.randn(TOKENS, D_OUT)

    y = adapter(x)
    aux = build_method(method).aux_loss(model)
    assert aux is not None
    (torch.sum(y * cotangent) + 0.3 * aux).backward()
    fast = grads(adapter)

    y_ref, aux_ref, counts_ref = reference_forward(x, adapter, **rule)
    (torch.sum(y_ref * cotangent) + 0.3 * aux_ref).backward()
    slow = grads(adapter)

    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aux, aux_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(adapter.router(x).selected.sum(0), counts_ref)
    assert 0 < counts_ref.sum() < TOKENS * EXPERTS or rule.get("top_k") is not None  # selection is non-trivial
    assert set(fast) == set(slow) and fast["router.gate.weight"].abs().sum() > 0
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("method,options", [("mole", {"top_k": 1}), ("adamole", {})])
def test_single_selected_expert_gets_no_router_gradient_from_task_loss(method, options):
    model, adapter = build(method, **options)
    model.double()  # fp64, so "zero" means zero and not p/p rounding scaled by a large upstream gradient
    with torch.no_grad():  # gate reads the first N inputs; token t's input N is large at t mod N → p ≈ one-hot
        adapter.router.gate.weight.zero_()
        adapter.router.gate.weight[:, :EXPERTS] = 20 * torch.eye(EXPERTS)
    x = torch.randn(TOKENS, D_IN, dtype=torch.float64)
    x[:, :EXPERTS] += 10 * torch.eye(EXPERTS).repeat(TOKENS // EXPERTS, 1)
    assert torch.equal(adapter.router(x).selected.sum(-1), torch.ones(TOKENS, dtype=torch.float64))
    adapter(x).pow(2).sum().backward()  # task loss only
    router_grads = [p.grad for p in adapter.router.parameters()]
    assert all(g.abs().max() < 1e-9 for g in router_grads)
    assert adapter.experts.lora_A.grad.abs().max() > 1e-3 and adapter.experts.lora_B.grad.abs().max() > 1e-3


def test_nothing_selected_gives_zero_adapter_output_without_nan():
    model, adapter = build("adamole", max_threshold=1.0)
    with torch.no_grad():
        adapter.router.gate.weight.zero_()  # p = 1/N exactly
        adapter.router.threshold.bias.fill_(5.0)  # τ ≈ 0.99 > 1/N
    model.train()
    x = torch.randn(TOKENS, D_IN, requires_grad=True)
    y = adapter(x)
    assert torch.equal(adapter.router(x).selected, torch.zeros(TOKENS, EXPERTS))
    assert torch.equal(y, torch.zeros_like(y))
    (y.sum() + adapter.aux_loss).backward()
    assert all(torch.isfinite(p.grad).all() for p in adapter.parameters())
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_balanced_top2_aux_loss_is_two_per_layer():
    """Switch loss at perfect balance: f_i = k/N, P_i = 1/N → N·Σ f·P = k (spec §5: 2 per layer)."""
    tokens = 4 * EXPERTS
    selected = torch.zeros(tokens, EXPERTS)
    for t in range(tokens):  # token t picks experts t and t+1 (mod N): each expert twice per N tokens
        selected[t, [t % EXPERTS, (t + 1) % EXPERTS]] = 1.0
    probs = torch.full((tokens, EXPERTS), 1.0 / EXPERTS)
    loss = load_balancing_loss(Routing(weights=selected / 2, selected=selected, balance_scores=probs))
    assert loss.item() == pytest.approx(2.0)


def test_aux_loss_summed_over_layers_survives_wrapping_and_is_never_stale_in_eval():
    method = build_method("adamole")
    model = method.apply(tiny_llama())
    ids = torch.randint(3, 259, (2, 6))
    model.train()
    model(input_ids=ids)
    adapters = moe_adapters(model)
    assert len(adapters) == 2 * 4  # q, k, v, o in 2 layers
    assert all(a.aux_loss is not None for _, a in adapters)
    expected = sum(a.aux_loss for _, a in adapters if a.aux_loss is not None)
    wrapped = nn.DataParallel(model)  # what Trainer does on several GPUs; the reference loses the loss here
    torch.testing.assert_close(method.aux_loss(wrapped), expected)
    torch.testing.assert_close(method.aux_loss(model), expected)
    model.eval()
    assert method.aux_loss(model) is None  # the last training forward's value is not reported in eval
    with torch.no_grad():
        model(input_ids=ids)
    assert method.aux_loss(model) is None and all(a.aux_loss is None for _, a in adapters)


def test_per_expert_dropout_masks_are_independent_and_shared_is_identical_in_eval():
    width, tokens = 16, 400
    per_expert = LoraExperts(width, 3, EXPERTS, rank=width, scaling=1.0, dropout=0.5, dropout_mode="per_expert")
    shared = LoraExperts(width, 3, EXPERTS, rank=width, scaling=1.0, dropout=0.5, dropout_mode="shared")
    with torch.no_grad():  # A_i = identity: each expert's rank activations are its dropped x
        per_expert.lora_A.copy_(torch.eye(width).repeat(EXPERTS, 1))
        per_expert.lora_B.normal_()
    shared.load_state_dict(per_expert.state_dict())
    x = torch.ones(tokens, width)

    def mask_agreement(experts: LoraExperts) -> float:
        kept = experts.train().rank_activations(x).unflatten(-1, (EXPERTS, width)) != 0
        return (kept[:, 0] == kept[:, 1]).float().mean().item()

    torch.manual_seed(0)
    assert 0.45 < mask_agreement(per_expert) < 0.55  # independent p=0.5 masks agree half the time
    assert mask_agreement(shared) == 1.0
    weights = torch.rand(tokens, EXPERTS)
    x = torch.randn(tokens, width)
    torch.testing.assert_close(per_expert.eval()(x, weights), shared.eval()(x, weights), atol=0, rtol=0)


def test_trainable_parameter_counts_match_llama2_7b():
    """Spec §0 arithmetic on a Llama-2-7B-shaped model built on the meta device (no weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000)
    expected = {"lora": 33_554_432, "mole": 37_748_736, "adamole": 38_273_152}
    for method, count in expected.items():
        with torch.device("meta"):
            model = build_method(method).apply(LlamaForCausalLM(config))
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count, method


@pytest.mark.parametrize("method", ["mole", "adamole"])
def test_save_and_load_reproduce_logits(tmp_path, method):
    trained = build_method(method, {"top_k": 3} if method == "mole" else {"max_threshold": 0.2})
    model = trained.apply(tiny_llama())
    with torch.no_grad():
        for _, adapter in moe_adapters(model):
            adapter.experts.lora_B.normal_(0.0, 0.1)
    trained.save(model, tmp_path, load_base_model("tiny-llama").reference())
    meta = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert meta["method"] == method and meta["tags"] == trained.tags()

    torch.manual_seed(123)  # a different adapter init, which loading must overwrite
    loader = build_method(meta["method"], {k: v for k, v in meta["config"].items()})
    restored = loader.load(tiny_llama(), tmp_path)
    ids = torch.randint(3, 259, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(input_ids=ids).logits, model.eval()(input_ids=ids).logits, atol=0, rtol=0)


def test_statistics_exclude_pads_and_count_all_tokens_without_a_mask():
    method = build_method("mole")
    model = method.apply(tiny_llama()).eval()
    torch.manual_seed(0)
    long, short = torch.randint(3, 259, (7,)), torch.randint(3, 259, (4,))
    batch = torch.stack([long, torch.cat([short, torch.zeros(3, dtype=torch.long)])])  # right-padded: pads never seen
    mask = (torch.arange(7) < torch.tensor([[7], [4]])).long()

    with torch.no_grad(), method.statistics(model) as padded:
        model(input_ids=batch, attention_mask=mask)
    with torch.no_grad(), method.statistics(model) as separate:
        model(input_ids=long[None])
        model(input_ids=short[None])
    with torch.no_grad(), method.statistics(model) as unmasked:
        model(input_ids=batch)

    padded_rows, separate_rows = padded.table(), separate.table()
    assert [r["tokens"] for r in padded_rows] == [11.0] * 8 and unmasked.table()[0]["tokens"] == 14.0
    for a, b in zip(padded_rows, separate_rows):
        assert a["module"] == b["module"]
        torch.testing.assert_close(torch.tensor(a["fraction"]), torch.tensor(b["fraction"]))
        assert a["entropy"] == pytest.approx(b["entropy"], abs=1e-6)
    metrics = padded.metrics()
    assert metrics["experts/mean_active"] == pytest.approx(2.0)  # top-2 selects exactly two per token
    assert metrics["experts/dead"] == sum(r["dead"] for r in padded_rows)
    assert {"experts/layer0/mean_active", "experts/layer1/dead"} <= set(metrics)
    assert all(a.observer is None for _, a in moe_adapters(model))  # hooks are removed on exit


def test_adamole_statistics_threshold_and_heatmap():
    method = build_method("adamole")
    model = method.apply(tiny_llama()).eval()
    with torch.no_grad(), method.statistics(model) as stats:
        model(input_ids=torch.randint(3, 259, (3, 8)))
    metrics = stats.metrics()
    assert 0 < metrics["experts/threshold_p10"] <= metrics["experts/threshold_p50"] <= metrics["experts/threshold_p90"] < 1 / 8
    assert 0 < metrics["experts/threshold_mean"] < 1 / 8
    assert 1 <= metrics["experts/mean_active"] <= 8
    figure = stats.figures()["experts/usage_heatmap.png"]
    assert len(figure.axes[0].get_yticklabels()) == 8  # one row per adapted module
    assert len(stats.tables()["experts/usage_table.json"]) == 8


@pytest.mark.parametrize(
    "method,options,message",
    [
        ("mole", {"top_k": 2, "threshold": 0.1}, "exactly one of top_k and threshold"),
        ("mole", {"top_k": 9}, "top_k must be in"),
        ("mole", {"rank": 30}, "multiple of num_experts"),
        ("adamole", {"max_threshold": 0}, "max_threshold must be in"),
        ("adamole", {"dropout_mode": "sometimes"}, "per_expert"),
    ],
)
def test_invalid_options_are_user_errors(method, options, message):
    with pytest.raises(UserError, match=message):
        build_method(method, options)


def test_defaults_are_the_reference_recipe():
    mole, adamole = build_method("mole"), build_method("adamole")
    assert mole.tags() == {
        "routing": "top_k",
        "num_experts": "8",
        "expert_rank": "4",
        "expert_scaling": "4",
        "dropout_mode": "per_expert",
        "top_k": "2",
    }
    assert adamole.tags()["max_threshold"] == "0.125" and adamole.tags()["routing"] == "adaptive_threshold"
    assert mole.aux_loss_coeff == adamole.aux_loss_coeff == 1e-3
    assert build_method("mole", {"threshold": "0.125"}).tags()["routing"] == "fixed_threshold"


def test_third_party_method_registers_without_touching_the_harness(monkeypatch):
    from dataclasses import dataclass

    monkeypatch.setattr(catalog, "_METHODS", dict(registry.all_methods()))  # undo the registration afterwards

    @dataclass
    class ScaledHeadConfig:
        scale: float = 1.0

    @register
    class ScaledHead(Method):
        name = "scaled_head"
        config_class = ScaledHeadConfig

        def apply(self, model):
            model.requires_grad_(False)
            model.lm_head.register_parameter("gain", nn.Parameter(torch.tensor(self.config.scale)))
            model.lm_head.register_forward_hook(lambda module, args, out: out * module.gain)
            return model

    method = build_method("scaled_head", {"scale": "2.5"})
    assert isinstance(method, ScaledHead) and method.config.scale == 2.5
    model = method.apply(tiny_llama())
    ids = torch.randint(3, 259, (1, 5))
    reference = tiny_llama()(input_ids=ids).logits
    torch.testing.assert_close(model(input_ids=ids).logits, 2.5 * reference)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["lm_head.gain"]
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


@pytest.mark.integration
def test_cli_sweep_logs_expert_statistics_to_mlflow(tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from adamole_bench.cli import app

    monkeypatch.setenv("ADAMOLE_BENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    args = [
        "run",
        "--model",
        "tiny-llama",
        "--methods",
        "mole,adamole",
        "--tasks",
        "fruit_or_color",
        "--max-steps",
        "3",
        "--limit",
        "4",
        "train.batch_size=2",
        "reference=false",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    trials = {r.data.tags["method"]: r for r in client.search_runs(experiments, "tags.kind = 'trial'")}
    assert set(trials) == {"mole", "adamole"}
    for method, run in trials.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["routing"] == ("top_k" if method == "mole" else "adaptive_threshold")
        metrics = run.data.metrics
        assert metrics["train/steps"] == 3 and metrics["experts/tokens"] > 0
        assert {"experts/mean_active", "experts/dead", "experts/entropy", "experts/layer0/mean_active"} <= set(metrics)
        assert ("experts/threshold_mean" in metrics) == (method == "adamole")
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "experts")}
        assert {"experts/usage_heatmap.png", "experts/usage_table.json"} <= artifacts
    assert trials["mole"].data.metrics["experts/mean_active"] == pytest.approx(2.0)
