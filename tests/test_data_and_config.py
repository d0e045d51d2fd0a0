"""Training tokens match lm-eval's scoring split; config layering, validation and hashing."""

import pytest
import torch

from adamole_bench.base.errors import UserError
from adamole_bench.base.paths import package_root
from adamole_bench.harness.model.loading import byte_level_tokenizer
from adamole_bench.harness.settings.config import config_hash, parse_override, trial_config
from adamole_bench.harness.settings.load import load_config
from adamole_bench.harness.train.data import EncodedExamples, LengthGroupedBatches, collate, encode_example
from adamole_bench.tasks.registry import training_pair
from adamole_bench.tasks.sources import load_task


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer()


def test_answer_tokens_are_what_lm_eval_scores(tokenizer):
    prompt = "Word: kiwi\nChoices:\nA. Fruit\nB. Colour\nAnswer:"
    example = encode_example(tokenizer, prompt, "A", max_length=256, loss_on="answer")
    # lm-eval: continuation = encode(context + " A")[len(encode(context)):]
    context = tokenizer.encode(prompt)
    continuation = tokenizer.encode(prompt + " A")[len(context) :]
    assert example["input_ids"] == context + continuation + [tokenizer.eos_token_id]
    supervised = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
    assert supervised == continuation + [tokenizer.eos_token_id]  # answer + EOS only, EOS not masked


def test_full_sequence_loss_and_left_truncation_keep_the_answer(tokenizer):
    prompt = "x" * 300 + "\nAnswer:"
    full = encode_example(tokenizer, prompt, "B", max_length=256, loss_on="full")
    assert full["labels"] == full["input_ids"] and len(full["input_ids"]) == 256
    short = encode_example(tokenizer, prompt, "B", max_length=16, loss_on="answer")
    assert len(short["input_ids"]) == 16
    assert tokenizer.decode(short["input_ids"][-3:-1]) == " B"
    assert sum(label != -100 for label in short["labels"]) == 3  # " ", "B", EOS


def test_examples_are_encoded_when_read_and_equal_the_eager_encoding(tokenizer):
    data = load_task("fruit_or_color")
    docs = data.splits["train"][:40]
    examples = EncodedExamples([(data.spec, docs[:30]), (data.spec, docs[30:])], tokenizer, 64, "answer", "letter")
    assert len(examples) == 40 and not examples._encoded
    eager = [encode_example(tokenizer, *training_pair(data.spec, doc, "letter"), 64, "answer") for doc in docs]
    assert examples[35] == eager[35] and examples[-1] == eager[-1] and examples.length(3) == len(eager[3]["input_ids"])
    assert sorted(examples._encoded) == [3, 35, 39]  # only what was read
    assert examples[:] == eager
    with pytest.raises(IndexError):
        examples[40]


def _eager_length_grouped_batches(lengths, batch_size, generator, drop_last):
    """The sampler's law written out: sort every group of 16 batches by length up front, then shuffle."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    size, batches = batch_size * LengthGroupedBatches.GROUP, []
    for start in range(0, len(order), size):
        group = sorted(order[start : start + size], key=lengths.__getitem__, reverse=True)
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    batches = [batch for batch in batches if len(batch) == batch_size] if drop_last else batches
    return [batches[index] for index in torch.randperm(len(batches), generator=generator).tolist()]


@pytest.mark.parametrize("count, batch_size, drop_last", [(1000, 8, False), (1000, 8, True), (77, 5, False), (77, 5, True), (3, 8, False)])
def test_length_grouped_batches_read_lengths_lazily_and_equal_the_eager_law(count, batch_size, drop_last):
    lengths = torch.randint(1, 300, (count,), generator=torch.Generator().manual_seed(count)).tolist()
    read = set()

    def length(index):
        read.add(index)
        return lengths[index]

    sampler = LengthGroupedBatches(length, count, batch_size, torch.Generator().manual_seed(7), drop_last)
    expected = _eager_length_grouped_batches(lengths, batch_size, torch.Generator().manual_seed(7), drop_last)
    batches = iter(sampler)
    first = next(batches, None)
    group = batch_size * LengthGroupedBatches.GROUP
    assert len(read) <= group  # one batch drawn: one group's lengths read
    assert [first, *batches] == expected and len(expected) == len(sampler)


def test_collate_pads_right_and_masks_pads(tokenizer):
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]


def test_yaml_then_flags_then_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("methods: [lora]\ntasks: [copa]\ntrain: {lr: 0.001, max_steps: 7}\nmethod_options: {lora: {rank: 4}}\n")
    config = load_config(path, ["train.lr=2e-4", "lora.alpha=8"], tasks=["boolq"], train__max_steps=None)
    assert config.tasks == ["boolq"]  # CLI flag beats the file
    assert config.train.max_steps == 7  # flag not given: the file's value stays
    assert config.train.lr == pytest.approx(2e-4)  # key=value beats everything
    assert config.method_options["lora"] == {"rank": 4, "alpha": 8}


def test_parse_override_routes_method_options():
    assert parse_override("lora.rank=4") == {"method_options": {"lora": {"rank": 4}}}
    assert parse_override("eval.limit=50") == {"eval": {"limit": 50}}
    with pytest.raises(UserError, match="is not key=value"):
        parse_override("train.lr")


def test_config_errors_are_user_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2]\n")
    with pytest.raises(UserError, match="'train' is a section"):
        load_config(bad)
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match=r"train\.batch_size must be > 0"):
        load_config(None, ["train.batch_size=0"])


def test_hash_identifies_what_changes_results():
    base = load_config(None, [])
    same = trial_config(base, "lora", "copa")
    assert config_hash(same) == config_hash(trial_config(load_config(None, []), "lora", "copa"))
    for override in ("train.lr=1e-3", "lora.rank=16", "eval.protocol=letter", "train.loss_on=full"):
        changed = trial_config(load_config(None, [override]), "lora", "copa")
        if changed != same:
            assert config_hash(changed) != config_hash(same), override
    assert config_hash(trial_config(base, "lora", "boolq")) != config_hash(same)


def test_config_layering_and_validation(tmp_path):
    reference = load_config(package_root() / "configs" / "adamole-reference.yaml", ["methods=[lora]"])
    assert (reference.model, reference.train.lr, reference.train.grad_accum, reference.train.loss_on) == ("meta-llama/Llama-2-7b-hf", 1e-4, 4, "full")
    smoke = load_config(package_root() / "configs" / "smoke.yaml", ["train.lr=0.5"], seeds=[7])
    assert smoke.train.lr == 0.5 and smoke.seeds == [7] and smoke.model == "tiny-llama"  # file ← flags ← key=value
    for override, message in (("train.lr=-1", "train.lr must be > 0"), ("train.lrr=1", "did you mean 'train.lr'"), ("tasks=[copx]", "unknown task")):
        with pytest.raises(UserError, match=message):
            load_config(package_root() / "configs" / "smoke.yaml", [override])
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_hash_covers_what_changes_results_and_nothing_else():
    base = load_config(None, [], model="tiny-llama", tasks=["fruit_or_color"])
    same = load_config(None, ["seeds=[5]", "experiment=other", "save_adapters=false"], model="tiny-llama", tasks=["fruit_or_color"])
    other = load_config(None, ["train.lr=1e-3"], model="tiny-llama", tasks=["fruit_or_color"])
    lora_hash = config_hash(trial_config(base, "lora", "fruit_or_color"))
    assert config_hash(trial_config(same, "lora", "fruit_or_color")) == lora_hash
    assert config_hash(trial_config(other, "lora", "fruit_or_color")) != lora_hash
    assert config_hash(trial_config(load_config(None, ["lora.rank=4"], model="tiny-llama"), "lora", "fruit_or_color")) != lora_hash
