"""The reference's scoring and data steps, selectable (issue 25): each protocol and data option against a
literal re-implementation of zefang-liu/AdaMoLE's test.py and train.py written here with plain torch and
transformers, never through the code under test.

Two tokenizers: tiny-llama's byte tokenizer, where "Answer: " + "A" splits as "Answer: A" does, and
SmolLM2's, where "Answer: " ends in a lone "Ġ" and the letter ids are "A", not the "ĠA" that the letter
protocol scores. Each drives a random tiny Llama of its vocabulary.
"""

import copy
import itertools
import re
from collections.abc import Sequence
from typing import Any, cast, overload

import pytest
import torch
from tokenizers import processors

from adamole_bench.base.errors import UserError
from adamole_bench.base.paths import package_root
from adamole_bench.harness.evaluate.scoring import evaluate
from adamole_bench.harness.model.loading import byte_level_tokenizer, smollm2_checkpoint, tiny_llama
from adamole_bench.harness.settings.config import EvalConfig, TrainConfig, config_hash, trial_config
from adamole_bench.harness.settings.load import load_config
from adamole_bench.harness.train import distributed
from adamole_bench.harness.train.data import EncodedExamples, encode_example
from adamole_bench.harness.train.loop import training_loader
from adamole_bench.tasks.registry import eval_row, training_pair
from adamole_bench.tasks.sources import load_task

DOCS = 24  # eval docs per protocol check
REFERENCE_BATCH = 16  # test.py --batch_size in configs/llama_adamole_csr_test.config


@pytest.fixture(scope="module")
def task():
    return load_task("commonsense_qa")  # five letters on every doc, lengths that vary


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_checkpoint())


@pytest.fixture(scope="module", params=["tiny-llama", "smollm2"])
def tokenizer(request):
    return byte_level_tokenizer() if request.param == "tiny-llama" else _smollm2_tokenizer()


def _model(tokenizer, seed: int = 0):
    return tiny_llama(len(tokenizer), seed=seed).eval()


def _reference_tokenizer(tokenizer, add_eos: bool = False):
    """test.py:94-98 and train.py:113-119: left padding, pad = EOS; train.py's add_eos_token=True
    appends EOS in the tokenizer's post-processor, after its BOS if it adds one."""
    tok = copy.deepcopy(tokenizer)
    tok.padding_side, tok.pad_token = "left", tok.eos_token
    if add_eos:
        bos = [(tok.bos_token, tok.bos_token_id)] if tok("x")["input_ids"][0] == tok.bos_token_id else []
        single = " ".join([name for name, _ in bos] + ["$A", tok.eos_token])
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single=single, special_tokens=bos + [(tok.eos_token, tok.eos_token_id)])
    return tok


def _rows(task) -> list[dict]:
    return [eval_row(task.spec, doc) for doc in task.splits["eval"][:DOCS]]


# --- scoring -------------------------------------------------------------------------------------


def _literal_logits(model, tokenizer, rows) -> tuple[list[int], torch.Tensor]:
    """test.py predict_choices (test.py:28-47): the prompt ending "Answer: ", tokenized in batches of 16
    left-padded with EOS, one forward pass, the logits at the last position restricted to each letter's
    `encode(letter, add_special_tokens=False)[-1]`, argmax. Also the log-softmax at those ids, which is
    what lm-eval reports per letter."""
    tok = _reference_tokenizer(tokenizer)
    predictions, log_probs = [], []
    for start in range(0, len(rows), REFERENCE_BATCH):
        batch = rows[start : start + REFERENCE_BATCH]
        inputs = tok([row["prompt"] + " " for row in batch], return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**inputs).logits[:, -1, :]
        letters = [chr(ord("A") + i) for i in range(max(len(row["letters"]) for row in batch))]
        ids = [tok.encode(letter, add_special_tokens=False)[-1] for letter in letters]
        predictions += torch.argmax(logits[:, ids], dim=-1).tolist()
        log_probs.append(torch.log_softmax(logits.float(), dim=-1)[:, ids])
    return predictions, torch.cat(log_probs)


def test_reference_logits_scores_as_the_reference_test_script(task, tokenizer):
    model, rows = _model(tokenizer), _rows(task)
    assert {len(row["letters"]) for row in rows} == {5}  # the reference's letters per batch are the doc's here
    result = evaluate(model, tokenizer, task, EvalConfig(protocol="reference_logits", batch_size=8, limit=DOCS))
    samples = sorted(result.samples, key=lambda s: s["doc_id"])
    predictions, log_probs = _literal_logits(model, tokenizer, rows)
    assert [s["prediction"] for s in samples] == predictions
    assert torch.allclose(torch.tensor([s["loglikelihoods"] for s in samples]), log_probs, atol=1e-4)
    assert result.metrics["acc"] == pytest.approx(sum(p == row["label"] for p, row in zip(predictions, rows)) / DOCS)
    # The protocol is not the letter protocol under another name: that one scores " A" after "Answer:".
    letter = evaluate(model, tokenizer, task, EvalConfig(protocol="letter", batch_size=8, limit=DOCS))
    letter_log_probs = torch.tensor([s["loglikelihoods"] for s in sorted(letter.samples, key=lambda s: s["doc_id"])])
    assert (letter_log_probs - log_probs).abs().max() > 1e-2


def test_smollm2_is_the_tokenizer_where_the_reference_context_differs(task):
    tok, prompt = _smollm2_tokenizer(), _rows(task)[0]["prompt"]
    context = tok.encode(prompt)
    assert tok.convert_ids_to_tokens(tok.encode(prompt + " ")[len(context) :]) == ["Ġ"]
    assert tok.convert_ids_to_tokens(tok.encode(prompt + " A")[len(context) :]) == ["ĠA"]  # the letter protocol's
    assert tok.convert_ids_to_tokens([tok.encode("A", add_special_tokens=False)[-1]]) == ["A"]  # the reference's


def _chatty(model, tokenizer):
    """Raise a few tokens' output rows so the random model writes spaces, capitals, newlines and EOS."""
    with torch.no_grad():
        for text in (" ", "A", " B", " C", " D", "\n"):
            model.lm_head.weight[tokenizer.encode(text, add_special_tokens=False)] *= 2.5
        model.lm_head.weight[tokenizer.eos_token_id] *= 2.5
    return model


def _literal_generations(model, tokenizer, rows) -> tuple[list[str], list[list[int]]]:
    """test.py without --logits on transformers 4.38.2: TextGenerationPipeline(batch_size=16) tokenizes
    each prompt without special tokens (its add_special_tokens=False default), left-pads the batch with
    EOS, generates 16 greedy tokens that EOS does not stop (the GenerationConfig has no eos_token_id),
    decodes the whole sequence without special tokens and cuts the decoded prompt off."""
    tok = _reference_tokenizer(tokenizer)
    texts, generated = [], []
    for start in range(0, len(rows), REFERENCE_BATCH):
        encoded = [tok(row["prompt"] + " ", add_special_tokens=False)["input_ids"] for row in rows[start : start + REFERENCE_BATCH]]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.tensor([[tok.eos_token_id] * (width - len(ids)) + ids for ids in encoded])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
        with torch.no_grad():
            out = model.generate(input_ids, attention_mask=mask, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=tok.eos_token_id)
        for prompt_ids, sequence in zip(input_ids, out):
            text = tok.decode(sequence, skip_special_tokens=True)
            texts.append(text[len(tok.decode(prompt_ids, skip_special_tokens=True)) :])
            generated.append(sequence[width:].tolist())
    return texts, generated


def test_reference_generate_scores_as_the_reference_pipeline(task, tokenizer):
    model, rows = _chatty(_model(tokenizer), tokenizer), _rows(task)
    result = evaluate(model, tokenizer, task, EvalConfig(protocol="reference_generate", batch_size=8, limit=DOCS))
    samples = sorted(result.samples, key=lambda s: s["doc_id"])
    texts, generated = _literal_generations(model, tokenizer, rows)
    letters = [match.group(1) if (match := re.search(r"\b([A-Z])\b", text)) else None for text in texts]  # test.py:135
    assert [s["generation"] for s in samples] == texts
    assert [s["acc"] for s in samples] == [float(letter == row["gold_letter"]) for letter, row in zip(letters, rows)]
    assert sum(letter is not None for letter in letters) >= DOCS // 3  # the check is not vacuous
    assert any(tokenizer.eos_token_id in ids[:-1] for ids in generated)  # EOS appeared, and generation went on


# --- data steps ------------------------------------------------------------------------------------

REFERENCE_STEPS: dict[str, Any] = {
    "length_grouping": "hf",
    "padding_side": "left",
    "pad_token": "eos",
    "pad_to_multiple_of": 8,
    "supervise_eos": False,
    "truncation_side": "right",
}


def test_reference_data_steps_give_the_reference_trainers_batches(task, tokenizer, tmp_path):
    """HF Trainer as train.py:113-138 and 191-225 run it (group_by_length, seed = data_seed, pad = EOS on
    the left, truncation=True, DataCollatorForLanguageModeling(mlm=False, pad_to_multiple_of=8)) on the
    same texts, recording every batch its collator makes; ours must be those batches, in that order."""
    import datasets
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    seed, docs = 3, task.splits["train"][:300]
    texts = [prompt + " " + answer for prompt, answer in (training_pair(task.spec, doc, "reference_logits") for doc in docs)]
    reference = _reference_tokenizer(tokenizer, add_eos=True)
    lengths = sorted(len(reference(text)["input_ids"]) for text in texts)
    max_length = lengths[len(lengths) * 7 // 10]  # cuts the longest 30%
    features = [reference(text, truncation=True, max_length=max_length) for text in texts]  # train.py:122-128
    collator = DataCollatorForLanguageModeling(reference, mlm=False, pad_to_multiple_of=8, return_tensors="pt")
    seen = []

    def recording(batch_features):
        batch = collator(batch_features)
        seen.append({key: batch[key].clone() for key in ("input_ids", "attention_mask", "labels")})
        return batch

    grouping = (
        {"train_sampling_strategy": "group_by_length"}
        if "train_sampling_strategy" in TrainingArguments.__dataclass_fields__
        else {"group_by_length": True}
    )
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=5, seed=seed, data_seed=seed,
        remove_unused_columns=False, report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True, **grouping,
    )  # fmt: skip
    dataset = datasets.Dataset.from_list([{"input_ids": f["input_ids"], "attention_mask": f["attention_mask"]} for f in features])
    Trainer(model=_model(tokenizer), args=args, train_dataset=dataset, data_collator=recording, processing_class=reference).train()

    examples = EncodedExamples([(task.spec, docs)], tokenizer, max_length, "full", "reference_logits", truncation_side="right", supervise_eos=False)
    config = TrainConfig(batch_size=4, grad_accum=2, loss_on="full", max_length=max_length, **REFERENCE_STEPS)
    ours = [batch for batch, _ in itertools.islice(training_loader(examples, config, seed, tokenizer.pad_token_id, distributed.Context()), len(seen))]
    assert len(seen) >= 10  # 5 steps × 2 micro-batches (accelerate may fetch one ahead)
    for step, (mine, theirs) in enumerate(zip(ours, seen)):
        for key in theirs:
            assert torch.equal(mine[key], theirs[key]), (step, key)
    assert all(batch["input_ids"].shape[1] % 8 == 0 for batch in seen)
    assert any(batch["attention_mask"][:, 0].eq(0).any() for batch in seen)  # left pads occurred


class _Numbered(Sequence):
    """Example i is the token i + 3 repeated lengths[i] times, so every padded batch names its examples."""

    eos_id = 2

    def __init__(self, lengths: list[int]):
        self.lengths = lengths

    def __len__(self) -> int:
        return len(self.lengths)

    @overload
    def __getitem__(self, index: int) -> dict: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict]: ...
    def __getitem__(self, index: int | slice) -> dict | list[dict]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return {"input_ids": [index + 3] * self.lengths[index], "labels": [index + 3] * self.lengths[index]}

    def length(self, index: int) -> int:
        return self.lengths[index]


def test_hf_length_grouping_is_transformers_sampler_seeded_as_the_trainer():
    """Literally: torch's global generator seeded with the seed (Trainer.__init__'s set_seed), and each
    pass first draws the DataLoader's 64-bit worker seed, then iterates transformers' LengthGroupedSampler
    over batch × grad_accum; with nothing else drawing, two passes give these orders."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = torch.randint(1, 90, (500,), generator=torch.Generator().manual_seed(1)).tolist()
    seed, batch_size, grad_accum = 11, 4, 3
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        expected = []
        for _ in range(2):
            torch.empty((), dtype=torch.int64).random_()
            expected += list(LengthGroupedSampler(batch_size * grad_accum, lengths=lengths))
    finally:
        torch.random.set_rng_state(state)
    config = TrainConfig(batch_size=batch_size, grad_accum=grad_accum, **REFERENCE_STEPS)
    loader = training_loader(cast(EncodedExamples, _Numbered(lengths)), config, seed, 0, distributed.Context())
    order = [int(row.max()) - 3 for _epoch in range(2) for batch, _tokens in loader for row in batch["input_ids"]]
    assert order == expected and sorted(order[:500]) == list(range(500))


def test_right_truncation_and_unsupervised_eos(tokenizer):
    """The reference's tokenizer(text, truncation=True, max_length) with add_eos_token: the text's end is
    cut, BOS and EOS stay; its collator masks EOS (pad == EOS). With the answer-only loss, nothing of a
    cut-off answer is supervised."""
    reference = _reference_tokenizer(tokenizer, add_eos=True)
    prompt = "Word: " + "kiwi " * 20 + "\nChoices:\nA. Fruit\nB. Colour\nAnswer:"
    text, context, eos = prompt + " B", tokenizer.encode(prompt), tokenizer.eos_token_id
    for max_length in (12, 400):
        expected = reference(text, truncation=True, max_length=max_length)["input_ids"]
        full = encode_example(tokenizer, prompt, "B", max_length, "full", truncation_side="right", supervise_eos=False)
        answer = encode_example(tokenizer, prompt, "B", max_length, "answer", truncation_side="right", supervise_eos=False)
        assert full["input_ids"] == answer["input_ids"] == expected and expected[-1] == eos
        assert full["labels"] == [-100 if token == eos else token for token in expected]
        kept = expected[len(context) : -1] if len(expected) > len(context) else []
        assert answer["labels"] == [-100] * (len(expected) - 1 - len(kept)) + kept + [-100]


def test_our_data_steps_stay_the_defaults_and_every_option_enters_the_hash():
    train, reference = TrainConfig(), load_config(package_root() / "configs" / "adamole-reference.yaml", ["methods=[lora]"])
    assert (train.length_grouping, train.padding_side, train.pad_token, train.pad_to_multiple_of, train.supervise_eos, train.truncation_side) == (
        "ours",
        "right",
        "tokenizer",
        None,
        True,
        "left",
    )
    assert EvalConfig().protocol == "letter"
    assert {key: getattr(reference.train, key) for key in REFERENCE_STEPS} == REFERENCE_STEPS
    assert reference.eval.protocol == "reference_logits" and reference.train.group_by_length
    full = ["train.loss_on=full"]  # right truncation needs it (below)
    base = config_hash(trial_config(load_config(None, full), "lora", "copa"))
    overrides = [f"train.{key}={str(value).lower()}" for key, value in REFERENCE_STEPS.items()]
    for override in [*overrides, "eval.protocol=reference_logits", "eval.protocol=reference_generate"]:
        assert config_hash(trial_config(load_config(None, [*full, override]), "lora", "copa")) != base, override
    with pytest.raises(UserError, match=r"train\.pad_to_multiple_of must be >= 1"):
        load_config(None, ["train.pad_to_multiple_of=0"])
    with pytest.raises(UserError, match=r"use train\.loss_on=full"):  # a batch of cut-off answers would have no loss
        load_config(None, ["train.truncation_side=right"])
