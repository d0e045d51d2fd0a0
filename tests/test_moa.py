"""Soft/Sparse MoA against a slow literal re-implementation of the reference formulas (spec §2, §3)."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from adamole_bench.harness.model.loading import BaseModel, _state_fingerprint, byte_level_tokenizer
from adamole_bench.methods.moa.model import MoaBlock, decoder_layers
from adamole_bench.methods.peft_tuner import MixtureLinear
from adamole_bench.methods.registry import build_method

SPEC_COLUMNS = ["lora_q", "lora_k", "lora_v", "prompt", "lora_o", "lora_up", "lora_gate", "lora_down", "parallel_adapter"]
ALL_TARGETS = "down_proj,gate_proj,up_proj,o_proj,v_proj,k_proj,q_proj"  # deliberately not in column order


def small_llama(seed: int = 0):
    """Tiny fp32 Llama with grouped-query attention (4 heads, 2 KV heads) so repeat_kv is exercised."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def randomize_adapters(model, seed: int = 1, std: float = 0.3) -> None:
    """Non-zero everything trainable (lora_B, prompt head gate, parallel adapter, router, threshold)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def blocks(model) -> list[MoaBlock]:
    """The adapter's MoaBlock of each decoder layer, in layer order (PEFT keeps them on its tuner)."""
    return [module for module in model.modules() if isinstance(module, MoaBlock)]


def layers_and_blocks(model):
    """(decoder layer, its MoaBlock) of an adapted model, in forward order."""
    return [(layer, block) for (_, layer), block in zip(decoder_layers(model.get_base_model()), blocks(model), strict=True)]


def adapted(method: str, seed: int = 0, randomize: bool = True, **options):
    built = build_method(method, options)
    model = built.apply(small_llama(seed))
    if randomize:
        randomize_adapters(model)
    return built, model


# ---------------------------------------------------------------------------------------------
# The literal reference: one decoder block written out from the spec, experts one by one, the
# sparse experts as torch.where gather → compute → scatter-add (the reference's MOELoraLayer).


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos[:, None] + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin[:, None]


def expert(compute, x, gate, out_features, sparse):
    if not sparse:
        return gate[..., None] * compute(x)
    result = torch.zeros(*x.shape[:2], out_features)
    selected = torch.where(gate)
    result[selected] += gate[selected][:, None] * compute(x[selected])
    return result


def lora(linear, scaling):
    branch = linear.adapter["default"]
    return lambda x: (x @ branch.lora_A.t()) @ branch.lora_B.t() * scaling


def reference_block(layer, block, x, cos, sin, config, sparse):
    attention, mlp = layer.self_attn, layer.mlp
    present = {"prompt": config.prompt_length > 0, "parallel_adapter": True}
    present |= {f"lora_{t.removesuffix('_proj')}": True for t in config.lora_targets}
    columns = [c for c in SPEC_COLUMNS if present.get(c)]
    router = block.router
    if config.router == "swiglu":
        logits = F.linear(
            F.silu(F.linear(x, router.w1.weight, router.w1.bias)) * F.linear(x, router.w3.weight, router.w3.bias), router.w2.weight, router.w2.bias
        )
    else:
        logits = F.linear(x, router.weight, router.bias)
    weights = torch.sigmoid(logits)
    if sparse:
        if config.const_threshold:
            threshold = torch.full_like(weights[..., :1], config.max_threshold)
        else:
            threshold = config.max_threshold * torch.sigmoid(F.linear(x, block.threshold.proj.weight, block.threshold.proj.bias))
        active = (weights - threshold >= 0).float()
        weights = (weights - threshold if config.threshold_weights == "adaptive" else weights) * active
    gate = {name: weights[..., i] for i, name in enumerate(columns)}
    s = config.alpha / config.rank

    def adapted_linear(name, inputs):
        linear = getattr(attention, name, None) or getattr(mlp, name)
        base = linear.base_layer if hasattr(linear, "base_layer") else linear
        out = base(inputs)
        if hasattr(linear, "adapter"):
            out = out + expert(lora(linear, s), inputs, gate["lora_" + name.removesuffix("_proj")], base.out_features, sparse)
        return out

    heads, kv_heads, dim = 4, 2, 8
    batch, length, _ = x.shape
    a = layer.input_layernorm(x)
    q = adapted_linear("q_proj", a).view(batch, length, heads, dim).transpose(1, 2)
    k = adapted_linear("k_proj", a).view(batch, length, kv_heads, dim).transpose(1, 2).repeat_interleave(2, dim=1)
    v = adapted_linear("v_proj", a).view(batch, length, kv_heads, dim).transpose(1, 2).repeat_interleave(2, dim=1)
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    causal = torch.full((length, length), float("-inf")).triu(1)
    o = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim) + causal, dim=-1) @ v
    o = o.transpose(1, 2).reshape(batch, length, -1)
    if config.prompt_length:
        prompt = block.prompt.embeddings
        k_base, v_base = attention.k_proj.base_layer, attention.v_proj.base_layer
        kp = k_base(prompt).view(-1, kv_heads, dim).transpose(0, 1).repeat_interleave(2, dim=0)
        vp = v_base(prompt).view(-1, kv_heads, dim).transpose(0, 1).repeat_interleave(2, dim=0)
        scores = block.prompt.head_gate * torch.softmax(q @ kp.transpose(-1, -2) / math.sqrt(dim), dim=-1)
        o = o + gate["prompt"][..., None] * (scores @ vp).transpose(1, 2).reshape(batch, length, -1)
    h = x + adapted_linear("o_proj", o)
    f = layer.post_attention_layernorm(h)
    u = F.silu(adapted_linear("gate_proj", f)) * adapted_linear("up_proj", f)
    pa = block.parallel_adapter
    parallel = lambda z: F.linear(F.silu(F.linear(z, pa.down.weight, pa.down.bias)), pa.up.weight, pa.up.bias)  # noqa: E731
    y = adapted_linear("down_proj", u) + expert(parallel, f, gate["parallel_adapter"], x.shape[-1], sparse)
    return h + y


def reference_logits(model, ids, config, sparse):
    llama = model.get_base_model()
    x = llama.model.embed_tokens(ids)
    cos, sin = llama.model.rotary_emb(x, torch.arange(ids.shape[1])[None])
    for layer, block in layers_and_blocks(model):
        x = reference_block(layer, block, x, cos, sin, config, sparse)
    return llama.lm_head(llama.model.norm(x))


CASES = [
    ("soft-moa", {}),
    ("soft-moa", {"router": "swiglu", "lora_targets": ALL_TARGETS}),
    ("sparse-moa", {"router": "swiglu"}),
    ("sparse-moa", {"lora_targets": ALL_TARGETS, "prompt_length": 3, "threshold_weights": "adaptive"}),
    ("sparse-moa", {"const_threshold": True, "max_threshold": 0.6}),
]


@pytest.mark.parametrize(("name", "options"), CASES)
def test_forward_matches_literal_reference(name, options):
    method, model = adapted(name, **options)
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fast = model(ids).logits
        expected = reference_logits(model, ids, method.config, sparse=name == "sparse-moa")
        base = small_llama()(ids).logits
    assert (expected - base).abs().max() > 1e-2  # the random adapters change the output visibly
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)


def test_sparse_case_mixes_active_and_inactive_experts():
    """The sparse equivalence above is only meaningful if some (token, expert) pairs are off."""
    method, model = adapted("sparse-moa", router="swiglu")
    with method.statistics(model) as stats, torch.no_grad():
        model(torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(3)))
    rates = [v for k, v in stats.metrics().items() if k.startswith("moa/activation/")]
    assert min(rates) > 0.0 and min(rates) < 1.0


def test_router_columns_follow_reference_order():
    assert blocks(adapted("soft-moa", randomize=False)[1])[0].expert_names == [
        "lora_q",
        "lora_k",
        "lora_v",
        "prompt",
        "lora_o",
        "lora_down",
        "parallel_adapter",
    ]
    assert blocks(adapted("sparse-moa", randomize=False)[1])[0].expert_names == [
        "lora_q",
        "lora_k",
        "lora_v",
        "lora_o",
        "lora_down",
        "parallel_adapter",
    ]
    every = blocks(adapted("soft-moa", randomize=False, lora_targets=ALL_TARGETS)[1])[0]
    assert every.expert_names == SPEC_COLUMNS
    assert every.router.out_features == len(SPEC_COLUMNS)


def test_gate_column_drives_its_own_expert():
    """Force the router so only the lora_v column is on: the output then moves only through LoRA_V."""
    _, model = adapted("sparse-moa")
    ids = torch.randint(0, 50, (1, 7))
    for block in blocks(model):
        assert isinstance(block.router, torch.nn.Linear)
        with torch.no_grad():
            block.router.weight.zero_()
            block.router.bias.fill_(-30.0)
            block.router.bias[block.column("lora_v")] = 30.0
    with torch.no_grad():
        only_v = model(ids).logits
        for layer, _ in layers_and_blocks(model):
            layer.get_parameter("self_attn.v_proj.adapter.default.lora_B").zero_()
        without_v = model(ids).logits
        base = small_llama()(ids).logits
    torch.testing.assert_close(without_v, base, rtol=0, atol=1e-6)
    assert (only_v - base).abs().max() > 1e-2


def threshold_and_router_grads(threshold_weights):
    _, model = adapted("sparse-moa", threshold_weights=threshold_weights)
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(3))
    model(ids, labels=ids).loss.backward()
    block = blocks(model)[0]
    assert block.threshold is not None and block.threshold.proj is not None and isinstance(block.router, torch.nn.Linear)
    return block.threshold.proj.weight.grad, block.router.weight.grad


def test_threshold_gets_no_gradient_in_faithful_mode():
    threshold_grad, router_grad = threshold_and_router_grads("faithful")
    assert threshold_grad is None  # the reference's bug: t only enters through the 0/1 mask
    assert router_grad is not None and router_grad.abs().sum() > 0


def test_threshold_trains_in_adaptive_mode():
    threshold_grad, _ = threshold_and_router_grads("adaptive")
    assert threshold_grad is not None and threshold_grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["soft-moa", "sparse-moa"])
def test_initialisation_leaves_base_model_nearly_unchanged(name):
    _, model = adapted(name, randomize=False)
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        diff = (model(ids).logits - small_llama()(ids).logits).abs().max()
    assert all(m.adapter["default"].get_parameter("lora_B").abs().sum() == 0 for m in model.modules() if isinstance(m, MixtureLinear))
    assert all(b.prompt is None or b.prompt.head_gate.abs().sum() == 0 for b in model.modules() if isinstance(b, MoaBlock))
    assert diff < 1e-4  # only the parallel adapter's 1e-4-gain weights contribute


def llama_31_8b_trainable(name, **options):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    )
    with torch.device("meta"):
        model = build_method(name, options).apply(LlamaForCausalLM(config))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    first_layer = re.compile(r"\.layers\.0\.|\.moa_blocks\.default\.0\.")  # its LoRA experts and its MoaBlock
    return sum(v for n, v in trainable.items() if first_layer.search(n)), sum(trainable.values())


def test_trainable_parameters_match_spec_for_llama_31_8b():
    assert llama_31_8b_trainable("soft-moa") == (565_303, 18_089_696)
    assert llama_31_8b_trainable("sparse-moa", router="swiglu") == (696_535, 22_289_120)
    assert llama_31_8b_trainable("soft-moa", router="swiglu") == (766_259, 24_520_288)


@pytest.mark.parametrize("name", ["soft-moa", "sparse-moa"])
def test_save_load_round_trip_gives_identical_logits(name, tmp_path):
    """Through PEFT (the saved layout), with grouped-query attention in the prompt expert."""
    method, model = adapted(name)
    ids = torch.randint(0, 50, (2, 9))
    base = small_llama()
    method.save(model, tmp_path, BaseModel(base, byte_level_tokenizer(), "small-llama", "code", _state_fingerprint(base)).reference())
    reloaded = build_method(name).load(base, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_statistics_are_exact_and_skip_padding():
    method, model = adapted("sparse-moa")
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # three pad positions (right padding)
    with torch.no_grad():
        hidden = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        with method.statistics(model) as stats:
            model(ids, attention_mask=mask)
    counted = mask.bool()
    active_per_layer = []
    for index, block in enumerate(blocks(model)):
        with torch.no_grad():
            gates = block.gates(hidden[index])
        active_per_layer.append((gates != 0)[counted].double().mean(dim=0))
    expected_active = torch.stack(active_per_layer)
    metrics = stats.metrics()
    assert metrics["moa/tokens"] == 15
    torch.testing.assert_close(stats.per_layer()["activation"], expected_active)
    assert metrics["moa/mean_active"] == pytest.approx(float(expected_active.sum(dim=1).mean()))
    assert 0.0 <= metrics["moa/threshold_min"] <= metrics["moa/threshold_mean"] <= metrics["moa/threshold_max"] <= 0.5
    figure = stats.figures()["experts/usage_heatmap.png"]
    assert figure.axes[0].images[0].get_array().shape == (2, 6)


def test_statistics_without_mask_count_every_token():
    method, model = adapted("soft-moa")
    with method.statistics(model) as stats, torch.no_grad():
        model(torch.randint(0, 50, (3, 5)))
    metrics = stats.metrics()
    assert metrics["moa/tokens"] == 15
    assert metrics["moa/mean_active"] == 7.0  # soft MoA runs every expert on every token


@pytest.mark.integration
def test_sweep_logs_expert_statistics_to_mlflow(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from adamole_bench.cli import app

    monkeypatch.setenv("ADAMOLE_BENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--model",
            "tiny-llama",
            "--methods",
            "soft-moa,sparse-moa",
            "--tasks",
            "fruit_or_color",
            "--max-steps",
            "3",
            "--limit",
            "16",
            "reference=false",
        ],
    )
    assert result.exit_code == 0, result.output

    from mlflow.tracking import MlflowClient

    from adamole_bench.harness.store.tracking import default_tracking_uri

    client = MlflowClient(default_tracking_uri())
    trials = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id]) if r.data.tags.get("kind") == "trial"]
    assert sorted(r.data.tags["method"] for r in trials) == ["soft-moa", "sparse-moa"]
    for run in trials:
        assert run.info.status == "FINISHED"
        metrics = run.data.metrics
        assert metrics["moa/tokens"] > 0 and 0 < metrics["moa/mean_active"] <= metrics["moa/num_experts"]
        assert ("moa/threshold_mean" in metrics) == (run.data.tags["method"] == "sparse-moa")
        assert [a.path for a in client.list_artifacts(run.info.run_id, "experts")] == ["experts/usage_heatmap.png"]
    sparse = next(r for r in trials if r.data.tags["method"] == "sparse-moa")
    assert sparse.data.tags["moa.threshold_weights"] == "faithful"
