"""Scoring computes the output head only where a continuation is scored, with lm-eval's exact results."""

import pytest
import torch

from adamole_bench.harness.evaluate import scoring as evaluate_module
from adamole_bench.harness.evaluate.scoring import continuation_scorer, evaluate
from adamole_bench.harness.model.loading import load_base_model
from adamole_bench.harness.settings.config import EvalConfig
from adamole_bench.tasks.sources import load_task


@pytest.fixture(scope="module")
def tiny():
    return load_base_model("tiny-llama")


def _requests(count: int = 15) -> list:
    """Ragged contexts and 1-5 token continuations; some contexts end in token 0, HFLM's padding id, and
    two requests share a context with one-token continuations (HFLM then runs that context once)."""
    generator = torch.Generator().manual_seed(0)
    requests = []
    for i in range(count):
        length = int(torch.randint(5, 90, (1,), generator=generator))
        context = torch.randint(3, 259, (length,), generator=generator).tolist()
        if i % 4 == 0:
            context[-3:] = [0, 0, 0]
        continuation = torch.randint(3, 259, (1 + i % 5,), generator=generator).tolist()
        requests.append(((f"context {i}", f"continuation {i}"), context, continuation))
    shared = requests[1][1]
    requests += [(("shared", " A"), shared, [40]), (("shared", " B"), shared, [41])]
    return requests


def test_continuation_scorer_scores_as_hflm_from_fewer_head_positions(tiny):
    from lm_eval.models.huggingface import HFLM

    settings = {"pretrained": tiny.model, "tokenizer": tiny.tokenizer, "batch_size": 4, "device": "cpu"}
    full, lean = HFLM(**settings), continuation_scorer()(**settings)
    widths = []
    hook = tiny.model.lm_head.register_forward_hook(lambda module, args, output: widths.append(args[0].shape[1]))
    try:
        with torch.inference_mode():
            expected = full._loglikelihood_tokens(_requests(), disable_tqdm=True)
            full_widths, widths[:] = widths[:], []
            got = lean._loglikelihood_tokens(_requests(), disable_tqdm=True)
    finally:
        hook.remove()
    assert len(got) == len(expected) == 17
    assert [greedy for _, greedy in got] == [greedy for _, greedy in expected]
    assert max(abs(a - b) for (a, _), (b, _) in zip(got, expected)) < 1e-5  # GEMM row-blocking noise only
    assert len(widths) == len(full_widths) and all(kept < whole for kept, whole in zip(widths, full_widths))
    assert sum(widths) < sum(full_widths) / 2


def test_a_cut_off_continuation_fails_loudly(tiny):
    lean = continuation_scorer()(pretrained=tiny.model, tokenizer=tiny.tokenizer, batch_size=4, device="cpu")
    logits = torch.zeros(2, 259)
    assert lean._select_cont_toks(logits, contlen=2, inplen=2).shape == (2, 259)
    with pytest.raises(RuntimeError, match="lost a continuation's logits"):
        lean._select_cont_toks(logits, contlen=3, inplen=2)


def test_log_softmax_gets_each_rows_own_window_and_the_scores_stay_bitwise_the_same(tiny):
    """Without token 0 in the requests, lm-eval's log-softmax gets each row's last C positions (C: the
    longest continuation) instead of the batch's whole kept window; every score is bitwise the same."""
    requests = [(strings, [t or 7 for t in context], continuation) for strings, context, continuation in _requests()]
    settings = {"pretrained": tiny.model, "tokenizer": tiny.tokenizer, "batch_size": 4, "device": "cpu"}
    windowed, whole = continuation_scorer()(**settings), continuation_scorer()(**settings)
    whole.windows_logits = False
    handed: dict[str, list[tuple[int, ...]]] = {"windowed": [], "whole": []}

    def recording(call, shapes):
        def model_call(*args, **kwargs):
            out = call(*args, **kwargs)
            shapes.append(tuple(out.shape))
            return out

        return model_call

    for name, scorer in (("windowed", windowed), ("whole", whole)):
        scorer._model_call = recording(scorer._model_call, handed[name])
    with torch.inference_mode():
        expected = whole._loglikelihood_tokens(requests, disable_tqdm=True)
        got = windowed._loglikelihood_tokens(requests, disable_tqdm=True)
    assert got == expected and len(got) == 17  # exact floats, not approximately
    longest = max(len(continuation) for _, _, continuation in requests)
    assert all(shape[1] <= longest for shape in handed["windowed"])
    assert sum(b * w for b, w, _ in handed["windowed"]) < sum(b * w for b, w, _ in handed["whole"]) / 2


def test_a_row_read_at_the_wrong_length_fails_loudly(tiny):
    lean = continuation_scorer()(pretrained=tiny.model, tokenizer=tiny.tokenizer, batch_size=4, device="cpu")
    lean._windows = scoring_windows = evaluate_module.deque([(10, 2, 12)])  # row of 10 tokens, window 2, batch 12 wide
    with pytest.raises(RuntimeError, match="read a row as 10 tokens, lm-eval has 11"):
        lean._select_cont_toks(torch.zeros(2, 259), contlen=1, inplen=1)
    assert not scoring_windows


@pytest.mark.parametrize("protocol", ["letter", "cloze"])
def test_evaluate_gives_the_same_scores_as_plain_hflm(tiny, protocol, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    data, config = load_task("fruit_or_color"), EvalConfig(protocol=protocol, batch_size=8, limit=24)
    lean = evaluate(tiny.model, tiny.tokenizer, data, config)
    monkeypatch.setattr(evaluate_module, "continuation_scorer", lambda: HFLM)
    full = evaluate(tiny.model, tiny.tokenizer, data, config)
    assert lean.metrics == pytest.approx(full.metrics, abs=1e-12)
    assert [s["prediction"] for s in lean.samples] == [s["prediction"] for s in full.samples]
    differences = [abs(a - b) for x, y in zip(lean.samples, full.samples) for a, b in zip(x["loglikelihoods"], y["loglikelihoods"])]
    assert len(differences) >= 48 and max(differences) < 1e-5


def test_the_environment_is_collected_once_per_process_and_recorded_with_every_result(tiny, monkeypatch):
    import torch.utils.collect_env

    calls = []
    original = torch.utils.collect_env.get_pretty_env_info

    def counted_env_info():
        calls.append(1)
        return original()

    monkeypatch.setattr(torch.utils.collect_env, "get_pretty_env_info", counted_env_info)
    evaluate_module._environment.cache_clear()
    data, config = load_task("fruit_or_color"), EvalConfig(batch_size=8, limit=4)
    first, second = (evaluate(tiny.model, tiny.tokenizer, data, config).results_json for _ in range(2))
    assert len(calls) == 1
    assert "PyTorch version" in first["pretty_env_info"] and first["pretty_env_info"] == second["pretty_env_info"]
    assert first["transformers_version"] == second["transformers_version"] and first["lm_eval_version"]
