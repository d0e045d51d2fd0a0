"""Per-expert dropout without N copies (methods/expert_dropout.py).

Exactness: with the masks the sparse path drew (read back from its autograd node), outputs and
gradients of A, B, gate, threshold and x equal a literal per-token, per-expert loop in float64,
where every selected expert multiplies its own keep mask into x, as one nn.Dropout per expert.
Distribution: the masks have rate p, are independent across experts, tokens and features, and
their gaps follow the geometric law of independent Bernoulli draws.
"""

import math

import pytest
import torch
from scipy import stats

from adamole_bench.harness.model.loading import tiny_llama
from adamole_bench.methods.expert_dropout import ActiveRows, DroppedEntries, drop_positions, dropout_correction
from adamole_bench.methods.experts import LoraExperts
from adamole_bench.methods.moe_lora import MoeLoraAdapter, moe_adapters
from adamole_bench.methods.registry import build_method

D_IN, D_OUT, EXPERTS, TOKENS, P = 12, 10, 4, 40, 0.3


class OneLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = torch.nn.Linear(D_IN, D_OUT)

    def forward(self, x):
        return self.q_proj(x)


def adapted(method: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    options = {"num_experts": EXPERTS, "rank": 2 * EXPERTS, "dropout": P, "target_modules": ["q_proj"], **options}
    model = build_method(method, options).apply(OneLinear()).double().train()
    adapter = model.get_submodule("q_proj.adapter.default")
    assert isinstance(adapter, MoeLoraAdapter)
    with torch.no_grad():
        adapter.experts.lora_B.normal_(0.0, 0.5)
        adapter.router.gate.weight.mul_(3.0)
    return adapter


def drawn_keep_mask(output: torch.Tensor, groups: int) -> torch.Tensor:
    """The (tokens, groups, in) keep mask the forward drew, read from its autograd node."""
    stack, seen = [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "_DropoutCorrectionBackward":
            x, _, active, positions = node.saved_tensors  # type: ignore[attr-defined]  # torch's Node stub lacks a custom Function's saved_tensors
            rows = ActiveRows.of(active, x.shape[1])
            return DroppedEntries.at(positions, x.shape[1]).dense_keep_mask(rows, x.shape[0], groups)
        stack.extend(next_node for next_node, _ in node.next_functions)
    raise AssertionError("no dropout correction in the graph")


def literal_forward(x, adapter, keep, *, top_k=None, max_threshold=None):
    """Per token: softmax → selection → weights; Σ over selected i of w_i · s · B_i A_i (keep_i ⊙ x)/(1 − p)."""
    experts, router = adapter.experts, adapter.router
    n, r, s = experts.num_experts, experts.rank, experts.scaling
    a_mats = experts.lora_A.view(n, r, -1)
    rows = []
    for t in range(x.shape[0]):
        p = torch.softmax(router.gate.weight @ x[t], dim=0)
        if top_k is not None:
            values, indices = torch.topk(p, top_k)
            chosen = list(zip(indices.tolist(), values))
        else:
            tau = torch.sigmoid(router.threshold.weight[0] @ x[t] + router.threshold.bias[0]) * max_threshold
            chosen = [(i, p[i] - tau) for i in range(n) if p[i] - tau >= 0]
        total = sum(v for _, v in chosen)
        y = torch.zeros(experts.lora_B.shape[0], dtype=x.dtype)
        for i, v in chosen:
            mask = keep[t, i if keep.shape[1] == n else 0]
            dropped = mask * x[t] / (1 - experts.dropout_p)
            y = y + (v / total) * s * (experts.lora_B[:, i * r : (i + 1) * r] @ (a_mats[i] @ dropped))
        rows.append(y)
    return torch.stack(rows)


CASES = [
    ("mole", {"top_k": 2}, {"top_k": 2}),
    ("mole", {"top_k": 1}, {"top_k": 1}),
    ("adamole", {}, {"max_threshold": 1 / EXPERTS}),
    ("mole", {"top_k": 2, "dropout_mode": "shared"}, {"top_k": 2}),
    ("adamole", {"dropout_mode": "shared"}, {"max_threshold": 1 / EXPERTS}),
]


@pytest.mark.parametrize("method,options,rule", CASES, ids=[f"{m}-{o}" for m, o, _ in CASES])
def test_outputs_and_gradients_equal_a_literal_per_expert_loop_given_the_same_masks(method, options, rule):
    adapter = adapted(method, **options)
    torch.manual_seed(1)
    x = torch.randn(TOKENS, D_IN, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(TOKENS, D_OUT, dtype=torch.float64)
    parameters = dict(adapter.named_parameters())

    y = adapter(x)
    keep = drawn_keep_mask(y, EXPERTS if options.get("dropout_mode", "per_expert") == "per_expert" else 1)
    fast = torch.autograd.grad((y * cotangent).sum(), [x, *parameters.values()])
    y_literal = literal_forward(x, adapter, keep, **rule)
    slow = torch.autograd.grad((y_literal * cotangent).sum(), [x, *parameters.values()])

    assert 1 - keep.mean().item() > 0.05  # masks were really drawn (p = 0.3 on the selected rows, 1 elsewhere)
    torch.testing.assert_close(y, y_literal, atol=1e-12, rtol=1e-12)
    for name, a, b in zip(["x", *parameters], fast, slow):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12, msg=name)
    assert fast[list(parameters).index("router.gate.weight") + 1].abs().sum() > 0


def test_unselected_experts_get_exactly_zero_gradient():
    adapter = adapted("mole", top_k=1)
    with torch.no_grad():  # expert 3's gate logit is far below the others: never selected
        adapter.router.gate.weight[3] = -50.0 * adapter.router.gate.weight[:3].abs().sum(0)
    x = torch.randn(TOKENS, D_IN, dtype=torch.float64).abs()
    assert adapter.router(x).selected[:, 3].sum() == 0
    adapter(x).pow(2).sum().backward()
    r = adapter.experts.rank
    assert torch.equal(adapter.experts.lora_A.grad[3 * r :], torch.zeros_like(adapter.experts.lora_A.grad[3 * r :]))
    assert torch.equal(adapter.experts.lora_B.grad[:, 3 * r :], torch.zeros_like(adapter.experts.lora_B.grad[:, 3 * r :]))
    assert adapter.experts.lora_A.grad[: 3 * r].abs().sum() > 0


def test_autograd_keeps_x_once_not_one_masked_copy_per_expert():
    experts = LoraExperts(64, 32, num_experts=8, rank=4, scaling=1.0, dropout=0.1).train()
    x = torch.randn(128, 64, requires_grad=True)
    saved: dict[int, int] = {}  # storage → bytes: a tensor saved twice is kept once

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        experts(x, torch.rand(128, 8)).sum().backward()
    x_bytes = x.numel() * x.element_size()
    assert max(saved.values()) <= x_bytes  # never a (tokens, experts, in) tensor
    # x once, the dropped positions (int32: p·N·4 bytes per entry of x, 0.8·x here), A, B and
    # (tokens, N·r) activations; N masked copies would be 8 × x and their masks more.
    assert sum(saved.values()) < 3 * x_bytes


def test_masks_have_rate_p_and_are_independent_across_experts_tokens_and_features():
    tokens, groups, width, p = 3000, 4, 50, 0.2
    torch.manual_seed(0)
    active = torch.ones(tokens, groups, dtype=torch.bool)
    rows = ActiveRows.of(active, width)
    positions = drop_positions(tokens * groups * width, p, torch.device("cpu"))
    dropped = 1 - DroppedEntries.at(positions, width).dense_keep_mask(rows, tokens, groups)  # (T, G, in)
    n = dropped.numel()
    rate = dropped.mean().item()
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n)

    def independent(a: torch.Tensor, b: torch.Tensor) -> float:
        """Chi-square test of independence of two 0/1 samples (p-value)."""
        table = [[int(((a == i) & (b == j)).sum()) for j in (0, 1)] for i in (0, 1)]
        return stats.chi2_contingency(table, correction=False).pvalue

    assert independent(dropped[:, 0].flatten(), dropped[:, 1].flatten()) > 1e-3  # two experts, same (token, feature)
    assert independent(dropped[:-1].flatten(), dropped[1:].flatten()) > 1e-3  # neighbouring tokens
    assert independent(dropped[..., :-1].flatten(), dropped[..., 1:].flatten()) > 1e-3  # neighbouring features
    per_row = dropped.sum(-1).flatten().numpy()  # drops per (token, expert) row: Binomial(width, p)
    observed = [int((per_row == k).sum()) for k in range(width + 1)]
    expected = stats.binom.pmf(range(width + 1), width, p) * len(per_row)
    keep = expected > 5
    chi2 = sum((o - e) ** 2 / e for o, e, k in zip(observed, expected, keep) if k)
    assert stats.chi2.sf(chi2, int(keep.sum()) - 1) > 1e-3


def test_small_masks_keep_the_binomial_law_at_the_boundaries():
    """Many tiny draws: the cut at `count` and the rare second round must not bias the count."""
    torch.manual_seed(0)
    count, p, trials = 3, 0.5, 20000
    drops = [len(drop_positions(count, p, torch.device("cpu"))) for _ in range(trials)]
    observed = [drops.count(k) for k in range(count + 1)]
    expected = stats.binom.pmf(range(count + 1), count, p) * trials
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    assert all(0 <= d <= count for d in drops)


def test_same_seed_same_masks_and_eval_draws_nothing():
    model = build_method("adamole").apply(tiny_llama())
    for _, adapter in moe_adapters(model):
        torch.nn.init.normal_(adapter.experts.lora_B, std=0.2)  # B = 0 would hide the masks
    ids = torch.randint(3, 259, (2, 7))

    def train_loss(seed):
        torch.manual_seed(seed)
        model.train()
        return model(input_ids=ids, labels=ids).loss

    assert torch.equal(train_loss(0), train_loss(0)) and not torch.equal(train_loss(0), train_loss(1))
    model.eval()
    state = torch.random.get_rng_state()
    with torch.no_grad():
        model(input_ids=ids)
    assert torch.equal(state, torch.random.get_rng_state())  # evaluation consumes no randomness


@pytest.mark.parametrize("method", ["mole", "adamole"])
def test_bf16_autocast_trains_fp32_parameters_close_to_fp32(method):
    model = build_method(method, {"dropout": 0.0}).apply(tiny_llama()).train()
    ids = torch.randint(3, 259, (2, 7))
    for _, adapter in moe_adapters(model):
        torch.nn.init.normal_(adapter.experts.lora_B, std=0.2)
    loss = model(input_ids=ids, labels=ids).loss
    reference = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_bf16 = model(input_ids=ids, labels=ids).loss
    grads = torch.autograd.grad(loss_bf16, [p for p in model.parameters() if p.requires_grad])
    assert all(g.dtype == torch.float32 for g in grads)
    assert abs(loss_bf16.item() - loss.item()) < 0.05 * loss.item()
    cosine = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in reference]), dim=0)
    assert cosine > 0.95


def test_correction_is_zero_without_active_rows():
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    correction = dropout_correction(x, weight, torch.zeros(5, 2, dtype=torch.bool), 0.5)
    assert torch.equal(correction, torch.zeros(5, 8, dtype=torch.float64))
    correction.sum().backward()
    assert x.grad is not None and weight.grad is not None
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(weight.grad, torch.zeros_like(weight))
