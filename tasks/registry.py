"""Task registry: each task is a YAML file in this folder (prompt, answer fields, data sources).

One place decides each fact: the prompts and training targets of every protocol are built
here, and both training (harness/train/data.py) and evaluation (tasks/lm_eval/loader.py) call
`eval_row` / `training_pair`, so a model is always scored on the text it was trained on.
"""

import functools
import hashlib
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..base.errors import unknown
from . import helpers

TASK_DIR = Path(__file__).resolve().parent
LM_EVAL_DIR = TASK_DIR / "lm_eval"
LETTERS = "ABCDEFGHIJ"
PROTOCOLS = ("letter", "cloze", "generate", "reference_logits", "reference_generate")
CHOICES_BLOCK = "choices_block"  # template field filled with "A. text\nB. text\n..." from the doc's answers


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    template: str  # letter-protocol prompt over the doc's fields; ends with "Answer:" (no trailing space)
    cloze_template: str  # the same prompt without the listed choices (cloze protocol)
    template_origin: str  # "AdaMoLE" (reference data.py) or "adamole-bench" (written here in the same style)
    choices: tuple[str, ...] | None = None  # format strings giving each answer text
    choices_field: str | None = None  # or a dotted path to a list of answer texts ("choices.text")
    choices_helper: str | None = None  # or a helper in tasks/helpers.py returning the answer texts
    label: str = "label"  # field holding the index of the correct choice (int or numeric string)
    label_offset: int = 0  # added to that field (-1 for 1-based labels)
    gold_helper: str | None = None  # or a helper computing the 0-based gold index
    prepare: str | None = None  # helper adding derived template fields (e.g. a marked word)
    keep: str | None = None  # helper deciding which docs belong to the task (e.g. text-only ScienceQA)
    sources: tuple[dict, ...] = field(default_factory=tuple)
    synthetic: bool = False  # a harness sanity task, left out of `--tasks all` and of paper averages
    yaml_digest: str = ""  # identifies this version of the task file (cache key)


def _cloze_from_letter(template: str) -> str:
    """Drop the listed choices: "...\\nChoices:\\nA. x\\nB. y\\nAnswer:" → "...\\nAnswer:"."""
    head, found, _ = template.partition("\nChoices:")
    return head + "\nAnswer:" if found else template


def _read_spec(path: Path) -> TaskSpec:
    text = path.read_text()
    raw = yaml.safe_load(text)
    template = raw["template"].rstrip(" ")
    return TaskSpec(
        name=raw["name"],
        description=raw.get("description", ""),
        template=template,
        cloze_template=raw.get("cloze_template", _cloze_from_letter(template)).rstrip(" "),
        template_origin=raw.get("template_origin", "AdaMoLE"),
        choices=tuple(raw["choices"]) if "choices" in raw else None,
        choices_field=raw.get("choices_field"),
        choices_helper=raw.get("choices_helper"),
        label=raw.get("label", "label"),
        label_offset=int(raw.get("label_offset", 0)),
        gold_helper=raw.get("gold_helper"),
        prepare=raw.get("prepare"),
        keep=raw.get("keep"),
        sources=tuple(raw.get("sources", ())),
        synthetic=bool(raw.get("synthetic", False)),
        yaml_digest=hashlib.sha256(text.encode()).hexdigest()[:12],
    )


@functools.cache
def all_tasks() -> dict[str, TaskSpec]:
    specs = (_read_spec(p) for p in sorted(TASK_DIR.glob("*.yaml")))
    return {spec.name: spec for spec in specs}


def paper_tasks() -> list[str]:
    """What `--tasks all` means: every registered task except the synthetic sanity checks."""
    return [name for name, spec in all_tasks().items() if not spec.synthetic]


def get_task(name: str) -> TaskSpec:
    tasks = all_tasks()
    if name not in tasks:
        raise unknown("task", name, tasks, "see `adamole-bench list tasks`")
    return tasks[name]


def helper(name: str):
    return getattr(helpers, name)


def _dotted(doc: dict, path: str):
    value = doc
    for part in path.split("."):
        value = value[part]
    return value


def answer_texts(spec: TaskSpec, doc: dict) -> list[str]:
    if spec.choices_helper:
        return list(helper(spec.choices_helper)(doc))
    if spec.choices_field:
        return list(_dotted(doc, spec.choices_field))
    fields = helper(spec.prepare)(doc) if spec.prepare else doc
    assert spec.choices is not None, f"task {spec.name}: no choices, choices_field or choices_helper"
    return [choice.format(**fields) for choice in spec.choices]


def template_fields(spec: TaskSpec, doc: dict) -> dict:
    fields = helper(spec.prepare)(doc) if spec.prepare else dict(doc)
    if CHOICES_BLOCK in {name for _, name, _, _ in string.Formatter().parse(spec.template) if name}:
        # Letters follow the doc's number of answers, never its own labels (ARC uses "1"-"4" on some questions).
        fields[CHOICES_BLOCK] = "".join(f"{LETTERS[i]}. {text}\n" for i, text in enumerate(answer_texts(spec, doc)))
    return fields


def letter_prompt(spec: TaskSpec, doc: dict) -> str:
    """The AdaMoLE prompt, ending in "Answer:"; the answer is " " + letter in training and evaluation."""
    return spec.template.format(**template_fields(spec, doc))


def reference_prompt(spec: TaskSpec, doc: dict) -> str:
    """The prompt exactly as the reference's test.py reads it: "...Answer: ", trailing space included
    (data.py formats every prompt so), for the reference_logits and reference_generate protocols."""
    return letter_prompt(spec, doc) + " "


def cloze_prompt(spec: TaskSpec, doc: dict) -> str:
    """The question without its listed choices, ending in "Answer:"; answers are scored as " " + text."""
    return spec.cloze_template.format(**template_fields(spec, doc))


def letters(spec: TaskSpec, doc: dict) -> list[str]:
    return list(LETTERS[: len(answer_texts(spec, doc))])


def gold_index(spec: TaskSpec, doc: dict) -> int:
    if spec.gold_helper:
        return int(helper(spec.gold_helper)(doc))
    return int(doc[spec.label]) + spec.label_offset


def keeps(spec: TaskSpec, doc: dict) -> bool:
    return bool(helper(spec.keep)(doc)) if spec.keep else True


def eval_row(spec: TaskSpec, doc: dict) -> dict:
    """One lm-eval doc carrying every protocol's view of the same example."""
    gold = gold_index(spec, doc)
    return {
        "prompt": letter_prompt(spec, doc),
        "reference_prompt": reference_prompt(spec, doc),
        "cloze_prompt": cloze_prompt(spec, doc),
        "letters": letters(spec, doc),
        "choices": answer_texts(spec, doc),
        "label": gold,
        "gold_letter": LETTERS[gold],
    }


def training_pair(spec: TaskSpec, doc: dict, protocol: str) -> tuple[str, str]:
    """(prompt, answer) a model is trained on for a protocol; the example text is prompt + " " + answer.

    letter, generate and the reference protocols train on the answer letter (the generation modes
    read the first letter the model writes); the text, "...Answer: B", is the reference's training
    text. cloze trains on the answer text, the continuation it is scored on.
    """
    row = eval_row(spec, doc)
    if protocol == "cloze":
        return row["cloze_prompt"], row["choices"][row["label"]]
    return row["prompt"], row["gold_letter"]


def lm_eval_task_name(task: str, protocol: str) -> str:
    return f"{task}_{protocol}"


def lm_eval_yaml(task: str, protocol: str) -> str:
    """The per-task lm-eval file: the protocol base plus which registry task feeds it."""
    return f"include: _{protocol}.yaml\ntask: {lm_eval_task_name(task, protocol)}\ndataset_kwargs:\n  task: {task}\n"


def write_lm_eval_yamls() -> list[Path]:
    """(Re)write tasks/lm_eval/<task>_<protocol>.yaml for every registered task; tests check they match."""
    written = []
    for task in all_tasks():
        for protocol in PROTOCOLS:
            path = LM_EVAL_DIR / f"{lm_eval_task_name(task, protocol)}.yaml"
            path.write_text(lm_eval_yaml(task, protocol))
            written.append(path)
    return written


if __name__ == "__main__":
    print("\n".join(str(p) for p in write_lm_eval_yamls()))
