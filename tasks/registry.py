"""Task registry: each task is a YAML file in this folder (prompt, answer fields, data sources).

One place decides each fact: the letter prompt is built here, and both training
(harness/data.py) and evaluation (tasks/lm_eval/loader.py) call `letter_prompt`.
"""

import functools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..harness.errors import UserError, unknown

TASK_DIR = Path(__file__).resolve().parent
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    template: str  # letter-protocol prompt over the doc's fields; ends with "Answer:" (no trailing space)
    choices: tuple[str, ...] | None  # format strings giving each answer text (cloze protocol, A/B/... labels)
    choices_helper: str | None  # or a helper in tasks/helpers.py returning the answer texts
    label: str  # field holding the 0-based index of the correct choice
    sources: tuple[dict, ...] = field(default_factory=tuple)
    prepare: str | None = None  # helper adding derived template fields (e.g. a choices block)


def _read_spec(path: Path) -> TaskSpec:
    raw = yaml.safe_load(path.read_text())
    choices = raw.get("choices")
    return TaskSpec(
        name=raw["name"],
        description=raw.get("description", ""),
        template=raw["template"].rstrip(" "),
        choices=tuple(choices) if isinstance(choices, list) else None,
        choices_helper=choices if isinstance(choices, str) else None,
        label=raw.get("label", "label"),
        sources=tuple(raw.get("sources", ())),
        prepare=raw.get("prepare"),
    )


@functools.cache
def all_tasks() -> dict[str, TaskSpec]:
    specs = (_read_spec(p) for p in sorted(TASK_DIR.glob("*.yaml")))
    return {spec.name: spec for spec in specs}


def get_task(name: str) -> TaskSpec:
    tasks = all_tasks()
    if name not in tasks:
        raise unknown("task", name, tasks, "see `adamole-bench list tasks`")
    return tasks[name]


def parse_task_list(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return list(all_tasks())
    for name in names:
        get_task(name)
    if not names:
        raise UserError("no task given; pass --tasks copa,boolq (see `adamole-bench list tasks`)")
    return names


def _helper(name: str):
    from . import helpers

    return getattr(helpers, name)


def template_fields(spec: TaskSpec, doc: dict) -> dict:
    return _helper(spec.prepare)(doc) if spec.prepare else doc


def answer_texts(spec: TaskSpec, doc: dict) -> list[str]:
    if spec.choices_helper:
        return list(_helper(spec.choices_helper)(doc))
    fields = template_fields(spec, doc)
    return [choice.format(**fields) for choice in spec.choices]


def letter_prompt(spec: TaskSpec, doc: dict) -> str:
    """The AdaMoLE prompt, ending in "Answer:"; the answer is " " + letter in training and evaluation."""
    return spec.template.format(**template_fields(spec, doc))


def letters(spec: TaskSpec, doc: dict) -> list[str]:
    return list(LETTERS[: len(answer_texts(spec, doc))])


def gold_index(spec: TaskSpec, doc: dict) -> int:
    return int(doc[spec.label])


def eval_row(spec: TaskSpec, doc: dict) -> dict:
    """One lm-eval doc carrying every protocol's view of the same example."""
    return {
        "prompt": letter_prompt(spec, doc),
        "letters": letters(spec, doc),
        "choices": answer_texts(spec, doc),
        "label": gold_index(spec, doc),
    }
