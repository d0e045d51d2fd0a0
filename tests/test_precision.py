"""Mixed precision (harness/model/precision.py) and waste-free evaluation, on the tiny random Llama."""

import copy
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from scipy import stats

from adamole_bench.base.errors import UserError
from adamole_bench.harness.evaluate.scoring import evaluate
from adamole_bench.harness.model.loading import load_base_model
from adamole_bench.harness.model.precision import FP32_ATTENTION, Precision, cpu_bf16_flags, resolve_precision
from adamole_bench.harness.report.stats import wilson_interval
from adamole_bench.harness.settings.config import EvalConfig, TrainConfig, trial_config
from adamole_bench.harness.settings.load import load_config
from adamole_bench.harness.train.data import EncodedExamples
from adamole_bench.harness.train.loop import set_seed, train
from adamole_bench.methods.moe_lora import MoeLoraAdapter, MoeLoraMethod
from adamole_bench.methods.registry import build_method
from adamole_bench.tasks.sources import load_task

BF16 = Precision("bf16", "cpu")
FP32 = Precision("fp32", "cpu")


@pytest.fixture(scope="module")
def tiny():
    return load_base_model("tiny-llama")


@pytest.fixture(scope="module")
def task():
    return load_task("fruit_or_color")


def _batch(tokenizer, texts=("apple is a fruit", "red is a color, not a fruit at all")):
    encoded = tokenizer(list(texts), return_tensors="pt", padding=True)  # the short row is padded
    return {**encoded, "labels": encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)}


# --- resolution -------------------------------------------------------------------------------


def test_cpu_flags_come_from_proc_cpuinfo():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    expected = {"amx_bf16", "avx512_bf16"} & set(flags) if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else set()
    assert set(cpu_bf16_flags()) == expected


def test_auto_is_fp32_where_torch_is_held_to_avx2():
    """`ATEN_CPU_CAPABILITY=avx2` (how this project reproduces a CPU without AVX512) makes auto take the
    fp32 path such a CPU takes, whatever /proc/cpuinfo lists; without it, this CPU's own answer."""
    code = "from adamole_bench.harness.model.precision import resolve_precision as r; p = r('auto', 'cpu', 'smollm2-135m'); print(p.name, p.reason)"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    held = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert held == "fp32 auto: CPU has no AMX/AVX512-BF16"


def test_auto_is_bf16_for_smollm2_on_a_cpu_with_fast_bf16_and_fp32_otherwise():
    auto = resolve_precision("auto", "cpu", "smollm2-135m")
    if cpu_bf16_flags():  # this machine: avx512_bf16
        assert (auto.name, auto.compute_dtype) == ("bf16", torch.bfloat16)
        assert auto.describe().startswith("precision bf16 (auto: CPU has ")
    else:
        assert auto.name == "fp32"
    assert resolve_precision("auto", "cpu", "tiny-llama").name == "fp32"  # too small for bf16 to pay
    assert resolve_precision("auto", "cpu", "meta-llama/Llama-2-7b-hf").name == "fp32"  # papers trained fp32
    assert resolve_precision("bf16", "cpu", "tiny-llama") == Precision("bf16", "cpu", "requested")
    with pytest.raises(UserError, match="precision fp16 needs a CUDA GPU"):
        resolve_precision("fp16", "cpu", "smollm2-135m")


def test_resolved_precision_is_in_the_config_hash_never_auto():
    auto = load_config(None, [], model="smollm2-135m")
    pinned = load_config(None, [], model="smollm2-135m", precision=auto.resolved_precision().name)
    fp32 = load_config(None, ["precision=fp32"], model="smollm2-135m")
    resolved = trial_config(auto, "lora", "copa")
    assert resolved["precision"] in ("fp32", "bf16")
    assert resolved == trial_config(pinned, "lora", "copa")  # auto is whatever it resolved to
    if cpu_bf16_flags():
        assert trial_config(fp32, "lora", "copa") != resolved
    # expert_stats records more but never changes a number: not part of the identity
    assert trial_config(load_config(None, ["eval.expert_stats=false"], model="smollm2-135m"), "lora", "copa") == resolved


@pytest.mark.parametrize(
    "args",
    [
        ["--precision", "fp16"],  # no CUDA here
        ["--precision", "half"],
        ["dtype=bfloat16"],
    ],
)
def test_bad_precision_is_one_line_exit_2_before_any_work(cli, runs_dir, args):
    result = cli("run", "--model", "tiny-llama", "--methods", "lora", "--tasks", "fruit_or_color", *args)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "precision" in result.output
    assert not runs_dir.exists()  # nothing was started


def test_dtype_in_a_config_file_names_precision(tmp_path):
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({"model": "tiny-llama", "dtype": "float32"}))
    with pytest.raises(UserError, match="replaced by 'precision'"):
        load_config(tmp_path / "old.yaml")


# --- prepare, autocast, master weights ------------------------------------------------------


def test_prepare_stores_frozen_linears_in_bf16_and_keeps_the_rest_fp32(tiny):
    model = BF16.prepare(copy.deepcopy(tiny.model))
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for name, tensor in model.named_parameters():
        module = name.rsplit(".", 1)[0]
        assert tensor.dtype == (torch.bfloat16 if module in linears else torch.float32), name
    assert "lm_head" in linears and model.get_parameter("model.embed_tokens.weight").dtype == torch.float32
    assert model.config._attn_implementation == FP32_ATTENTION
    assert FP32.prepare(copy.deepcopy(tiny.model)).lm_head.weight.dtype == torch.float32


def test_prepare_unties_a_tied_output_head_so_the_embedding_stays_fp32(tiny):
    model = copy.deepcopy(tiny.model)
    model.lm_head.weight = model.model.embed_tokens.weight  # tied, as SmolLM2's are
    BF16.prepare(model)
    assert model.model.embed_tokens.weight.dtype == torch.float32 and model.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(model.lm_head.weight, tiny.model.model.embed_tokens.weight.bfloat16())


def test_fp32_attention_uses_the_same_masks_as_sdpa(tiny):
    """The registered attention must see the padding mask: with autocast off it is bit-identical."""
    batch = _batch(tiny.tokenizer)
    model = copy.deepcopy(tiny.model)
    BF16.prepare(copy.deepcopy(tiny.model))  # registers the implementation
    with torch.no_grad():
        expected = model(**batch).logits
        model.set_attn_implementation(FP32_ATTENTION)
        assert model.config._attn_implementation == FP32_ATTENTION
        assert torch.equal(model(**batch).logits, expected)


@pytest.mark.parametrize("method_name", ["lora", "adamole", "sparse-moa"])
def test_bf16_training_keeps_master_weights_and_optimizer_state_fp32_with_an_fp32_loss(tiny, task, method_name):
    method = build_method(method_name)
    set_seed(0)
    model = method.apply(BF16.prepare(copy.deepcopy(tiny.model)))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    model.train()
    with BF16.autocast():
        output = model(**_batch(tiny.tokenizer))
    assert output.logits.dtype == torch.bfloat16  # autocast really ran the base in bf16
    assert output.loss.dtype == torch.float32

    examples = EncodedExamples([(task.spec, task.splits["train"][:32])], tiny.tokenizer, 64, "answer", "letter")
    optimizers = []
    original_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        optimizers.append(self)
        return original_step(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "step", spy)
        result = train(model, method, examples, TrainConfig(max_steps=2, batch_size=8, warmup_steps=0), 0, tiny.tokenizer.pad_token_id, BF16)
    assert result.steps == 2 and all(loss == loss for loss in result.losses)
    states = [value for state in optimizers[0].state.values() for value in state.values() if value.dim()]
    assert states and all(value.dtype == torch.float32 for value in states)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


@pytest.mark.integration
def test_fp16_grad_scaler_unscales_before_clipping_and_skips_overflow_steps(tiny, task, monkeypatch):
    """fp16 is CUDA-only for users; the scaler path itself runs on CPU too, so it is tested here.
    A large initial scale (2**24) makes the first steps overflow for real (8 of 20 here)."""
    fp16 = Precision("fp16", "cpu")
    monkeypatch.setattr(Precision, "grad_scaler", lambda self: torch.amp.GradScaler("cpu", init_scale=2.0**24))
    method = build_method("lora")
    set_seed(0)
    model = method.apply(fp16.prepare(copy.deepcopy(tiny.model)))
    examples = EncodedExamples([(task.spec, task.splits["train"][:64])], tiny.tokenizer, 64, "answer", "letter")
    norms = []
    result = train(model, method, examples, TrainConfig(max_steps=20, batch_size=8, warmup_steps=0, lr=1e-2), 0, tiny.tokenizer.pad_token_id,
                   fp16, on_step=lambda step, metrics: norms.append(metrics["train/grad_norm"]))  # fmt: skip
    assert 0 < result.skipped_steps < 20
    applied = [n for n in norms if n == n and n != float("inf")]
    assert len(applied) == 20 - result.skipped_steps and max(applied) < 1e2  # true norms, not ones scaled by ~2**16
    assert all(loss == loss and loss < float("inf") for loss in result.losses)  # a skipped step is no divergence
    assert result.losses[-1] < result.losses[0] / 2


# --- evaluation without waste ---------------------------------------------------------------


def _lora_with_an_update(tiny):
    """LoRA with a nonzero B (as after training), so merging changes the base weights."""
    method = build_method("lora")
    model = method.apply(copy.deepcopy(tiny.model))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "lora_B" in name:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return method, model.eval()


def _loglikelihoods(result):
    return torch.tensor([ll for sample in result.samples for ll in sample["loglikelihoods"]], dtype=torch.float64)


def test_merged_lora_scores_like_unmerged_and_restores_weights_bit_exactly(tiny, task):
    from peft.tuners.lora import LoraLayer

    method, model = _lora_with_an_update(tiny)
    config = EvalConfig(limit=32, batch_size=16)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    unmerged = evaluate(model, tiny.tokenizer, task, config)
    base_only = evaluate(tiny.model, tiny.tokenizer, task, config)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    with method.scoring(model) as scored:
        assert all(layer.merged for layer in layers)
        weight = layers[0].get_base_layer().get_parameter("weight")
        assert not torch.equal(weight, before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"])
        merged = evaluate(scored, tiny.tokenizer, task, config)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not any(layer.merged for layer in layers)
    # Same scores: fp32 summation-order noise only (measured ≤ 1e-5), far below the adapter's effect.
    assert (_loglikelihoods(merged) - _loglikelihoods(unmerged)).abs().max() < 1e-4
    assert (_loglikelihoods(base_only) - _loglikelihoods(unmerged)).abs().max() > 0.1
    assert merged.metrics["acc"] == unmerged.metrics["acc"]
    with method.scoring(model, torch.bfloat16) as scored:  # bf16 would round the update away: left unmerged
        assert not any(layer.merged for layer in layers) and scored is model


def test_bf16_evaluation_runs_in_bf16_under_inference_mode(tiny, task):
    seen = []
    model = BF16.prepare(copy.deepcopy(tiny.model))
    hook = model.lm_head.register_forward_hook(lambda module, args, output: seen.append((output.dtype, torch.is_inference_mode_enabled())))
    try:
        bf16 = evaluate(model, tiny.tokenizer, task, EvalConfig(limit=16, batch_size=16), BF16)
    finally:
        hook.remove()
    assert seen and set(seen) == {(torch.bfloat16, True)}
    fp32 = evaluate(tiny.model, tiny.tokenizer, task, EvalConfig(limit=16, batch_size=16))
    assert (_loglikelihoods(bf16) - _loglikelihoods(fp32)).abs().max() < 0.1


def _sweep(tmp_path, overrides, **flags):
    from rich.console import Console

    from adamole_bench.harness.run.sweep import run_sweep
    from adamole_bench.harness.store.tracking import Tracker

    config = load_config(None, overrides, **flags)
    tmp_path.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(config.experiment, uri=f"sqlite:///{tmp_path}/mlflow.db")
    return config, tracker, run_sweep(config, Console(quiet=True), tracker)


@pytest.mark.integration
def test_expert_stats_off_computes_no_statistics_and_eval_never_computes_aux_loss(tmp_path, monkeypatch):
    seen = []

    def watch(module, args, output):
        if isinstance(module, MoeLoraAdapter) and not module.training:
            seen.append((module.aux_loss is None, module.observer is None, torch.is_inference_mode_enabled()))

    def refuse(self, model):
        raise AssertionError("statistics were requested with eval.expert_stats=false")

    monkeypatch.setattr(MoeLoraMethod, "statistics", refuse)
    hook = torch.nn.modules.module.register_module_forward_hook(watch)
    try:
        flags = {"model": "tiny-llama", "methods": ["adamole"], "tasks": ["fruit_or_color"], "train__max_steps": 2, "eval__limit": 8}
        _, _, outcomes = _sweep(tmp_path, ["eval.expert_stats=false", "save_adapters=false"], **flags)
    finally:
        hook.remove()
    assert [o.status for o in outcomes] == ["finished", "finished"], [o.error for o in outcomes]  # adamole + base reference
    adamole = next(o for o in outcomes if o.trial.method == "adamole")
    assert not any(key.startswith("experts/") for key in adamole.metrics)
    assert seen and set(seen) == {(True, True, True)}  # no aux loss, no observer, no autograd
    monkeypatch.undo()
    _, _, outcomes = _sweep(tmp_path / "on", ["save_adapters=false"], **flags)  # the default records them
    assert next(o for o in outcomes if o.trial.method == "adamole").metrics["experts/tokens"] > 0


# --- precision parity on the CI smoke suite ---------------------------------------------------

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
# The smoke suite's own settings (tiny-llama, fruit_or_color, 100 steps, lr 3e-3) on seed 0 for LoRA
# (PEFT) and AdaMoLE (the shared expert core with its aux loss, adaptive threshold and per-expert
# dropout; MoLE differs only in the router), to keep it to 5 trials: the whole suite, MoA included,
# was measured once (numbers below) and is a `scripts/measure_precision.py parity` away.
PARITY_METHODS = "[lora,adamole]"
# What can vary, and the tolerance each gives (docs/performance.md, "Mixed precision"):
# - accuracy: the two precisions train like two seeds, then score the same n eval docs; so each runs
#   SEEDS seeds. Each must have learned the task (the Wilson 95% lower bound of its pooled accuracy above
#   the majority-class share: a broken bf16 path sits at the ~48% prior), and their mean accuracies may
#   differ by what the docs and the seeds allow: z(1 - ALPHA/2) * sqrt(2 p (1 - p) / (n k) + (s_a² + s_b²) / k)
#   at ALPHA = 0.001, with s the spread of the k seeds' accuracies. Neither part alone travels: on a CPU
#   without AVX512 (emulated bf16) fp32 AdaMoLE scores 115/128 = 0.898 at seed 0; on one with AMX, bf16
#   AdaMoLE scores 0.820, 0.961 and 1.000 at seeds 0-2 while fp32 scores 1.000 three times.
# - loss: bf16 rounds to 8 significant bits (unit roundoff u = 2^-8); steps 1-5 stay within 4u of fp32 and
#   the mean of steps 1-20 within 2u (measured: at most 0.8% = 2u on AVX512-BF16, 0.2% on AVX2). Later the
#   tiny model's training is chaotic and the curves drift apart like two seeds (up to 11% on the mean of
#   100 steps between two fp32 seeds), hence the seed-to-seed bound on the whole curve.
ACC_ALPHA = 0.001
SEEDS = (0, 1, 2)
BF16_UNIT_ROUNDOFF = 2.0**-8
FIRST_STEPS_TOLERANCE = 4 * BF16_UNIT_ROUNDOFF
EARLY_MEAN_TOLERANCE = 2 * BF16_UNIT_ROUNDOFF
MEAN_LOSS_TOLERANCE = 0.20


def _learned(correct: list[list[float]], labels: list) -> bool:
    """The Wilson 95% lower bound of the accuracy pooled over seeds is above the majority-class share."""
    majority = max(labels.count(label) for label in set(labels)) / len(labels)
    pooled = [x for seed in correct for x in seed]
    return wilson_interval(sum(pooled) / len(pooled), len(pooled))[0] > majority


def _same_accuracy(a: list[float], b: list[float], docs: int) -> bool:
    """Mean accuracies over k seeds on the same docs, no further apart than docs and seeds allow."""
    k, p = len(a), (sum(a) + sum(b)) / (2 * len(a))
    spread = (statistics.variance(a) + statistics.variance(b)) / k if k > 1 else 0.0
    allowed = stats.norm.ppf(1 - ACC_ALPHA / 2) * math.sqrt(2 * p * (1 - p) / (docs * k) + spread)
    return abs(statistics.fmean(a) - statistics.fmean(b)) <= allowed


def _smoke(tmp_path, precision, methods=PARITY_METHODS, seeds=SEEDS):
    """{(method, seed): its accuracy, per-doc results and loss curve} of the smoke suite in one precision."""
    config = load_config(SMOKE, [f"precision={precision}", f"methods={methods}", f"seeds=[{','.join(map(str, seeds))}]"])
    tmp_path.mkdir(parents=True, exist_ok=True)
    from rich.console import Console

    from adamole_bench.harness.report.results import REFERENCE_METHOD, rows_from_mlflow
    from adamole_bench.harness.run.sweep import run_sweep
    from adamole_bench.harness.store.tracking import Tracker

    tracker = Tracker(config.experiment, uri=f"sqlite:///{tmp_path}/mlflow.db")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the smoke suite's protocol (results/ci-smoke.yaml: torch_threads 1)
    try:
        outcomes = run_sweep(config, Console(quiet=True), tracker)
    finally:
        torch.set_num_threads(previous)
    assert all(o.status == "finished" for o in outcomes), [o.error for o in outcomes]
    results = {}
    for row in rows_from_mlflow(tracker, model=config.model):
        if row["method"] == REFERENCE_METHOD:
            continue  # the untrained reference has no loss curve
        history = tracker.client.get_metric_history(row["run_id"], "train/loss")
        samples = json.loads(Path(tracker.client.download_artifacts(row["run_id"], "lm_eval/samples.json", str(tmp_path))).read_text())
        results[(row["method"], row["seed"])] = {
            "acc": row["acc"],
            "tag": tracker.client.get_run(row["run_id"]).data.tags["precision"],
            "loss": [m.value for m in sorted(history, key=lambda m: m.step)],
            "loglikelihoods": [s["loglikelihoods"] for s in samples],
            "correct": [s["acc"] for s in samples],
            "labels": [s["label"] for s in samples],
        }
    return results


@pytest.mark.integration
def test_smoke_suite_gives_the_same_accuracies_and_loss_curves_in_fp32_and_bf16(tmp_path):
    fp32, bf16 = _smoke(tmp_path / "fp32", "fp32"), _smoke(tmp_path / "bf16", "bf16")
    assert set(fp32) == set(bf16) == {(m, s) for m in ("lora", "adamole") for s in SEEDS}
    for method in ("lora", "adamole"):
        a_runs, b_runs = [fp32[method, s] for s in SEEDS], [bf16[method, s] for s in SEEDS]
        assert {r["tag"] for r in a_runs} == {"fp32"} and {r["tag"] for r in b_runs} == {"bf16"}
        labels = a_runs[0]["labels"]
        assert all(r["labels"] == labels and len(r["correct"]) == len(labels) for r in a_runs + b_runs), method
        accuracies = ([r["acc"] for r in a_runs], [r["acc"] for r in b_runs])
        assert _learned([r["correct"] for r in a_runs], labels) and _learned([r["correct"] for r in b_runs], labels), (method, accuracies)
        assert _same_accuracy(*accuracies, docs=len(labels)), (method, accuracies)
        a, b = fp32[method, 0], bf16[method, 0]  # the loss curves of one seed: the same data order in both
        relative = [abs(x - y) / x for x, y in zip(a["loss"], b["loss"])]
        assert len(relative) == 100 and max(relative[:5]) <= FIRST_STEPS_TOLERANCE, method
        early = lambda curve: sum(curve[:20]) / 20  # noqa: E731
        assert abs(early(b["loss"]) - early(a["loss"])) / early(a["loss"]) <= EARLY_MEAN_TOLERANCE, method
        assert abs(sum(b["loss"]) - sum(a["loss"])) / sum(a["loss"]) <= MEAN_LOSS_TOLERANCE, method
        assert a["loss"] != b["loss"]  # bf16 really ran
    again = _smoke(tmp_path / "bf16-again", "bf16", "[adamole]", seeds=(0,))["adamole", 0]
    assert again == bf16["adamole", 0]  # same seed and config: bitwise the same in bf16 too


# --- the loss on supervised positions only ------------------------------------------------------


@pytest.mark.parametrize("method_name", ["lora", "mole", "adamole", "soft-moa", "sparse-moa"])
def test_supervised_loss_equals_transformers_shifted_loss_in_value_and_gradient(method_name):
    """Logits only where a label follows: the same loss and the same gradients (float64), with ragged
    right padding, answers at different positions per row, and the multi-process num_items scaling."""
    from adamole_bench.harness.model.loading import keeps_logits, tiny_llama
    from adamole_bench.harness.train.loop import supervised_loss

    torch.manual_seed(0)
    model = build_method(method_name, {}).apply(tiny_llama().double()).train()
    assert keeps_logits(model)
    lengths, width = [12, 9, 7], 12
    ids = torch.randint(3, 200, (3, width))
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    labels = torch.full_like(ids, -100)
    for row, n in enumerate(lengths):
        labels[row, n - 2 - row : n] = ids[row, n - 2 - row : n]  # 2, 3 and 4 answer tokens
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    params = [p for p in model.parameters() if p.requires_grad]

    def value_and_grads(loss_fn):
        set_seed(1)  # the same dropout masks for both
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, allow_unused=True)  # sparse-moa's threshold gets none (spec §10.1)
        return loss, grads

    def shifted_loss(num_items):  # the literal definition, on every position's logits, in float64
        logits = model(input_ids=ids, attention_mask=mask).logits
        total = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum")
        return total / (num_items if num_items is not None else (labels[:, 1:] != -100).sum())

    for num_items in (None, 7.5):
        expected, expected_grads = value_and_grads(lambda n=num_items: shifted_loss(n))
        got, got_grads = value_and_grads(lambda n=num_items: supervised_loss(model, batch, n))
        assert got.dtype == torch.float64 and torch.allclose(got, expected, rtol=1e-12, atol=0)
        for g, e in zip(got_grads, expected_grads):
            assert (g is None) == (e is None) and (g is None or torch.allclose(g, e, rtol=1e-9, atol=1e-12))
        set_seed(1)  # and transformers' own loss (it computes in float32)
        scale = {} if num_items is None else {"num_items_in_batch": num_items}
        assert model(**batch, **scale).loss.item() == pytest.approx(got.item(), rel=1e-6)
    assert any(g.abs().sum() > 0 for g in got_grads if g is not None)
