"""`adamole-bench list methods|tasks|models`: what is registered, and for tasks what their data gives
(sizes, source, and the interval a score on them can have)."""

from rich.table import Column, Table

from ...base.errors import UserError, unknown
from ...methods.registry import all_methods
from ...tasks.registry import all_tasks
from ...tasks.sources import summarize
from ..model.loading import DEFAULT_MODEL, EMBEDDED_MODELS
from ..settings.config import EvalConfig
from .stats import wilson_interval


def listing(what: str) -> Table:
    listings = {"methods": methods, "tasks": tasks, "models": models}
    if what not in listings:
        raise unknown("listing", what, listings)
    return listings[what]()


def methods() -> Table:
    table = Table("method", "description")
    for name, cls in all_methods().items():
        table.add_row(name, cls.description)
    return table


def _half_width(docs: int) -> float:
    """The 95% CI half-width in points of a score near 50% on `docs` docs."""
    low, high = wilson_interval(0.5, docs)
    return (high - low) / 2 * 100


def tasks() -> Table:
    limit = EvalConfig().limit
    caption = f"eval: docs scored with eval.limit=null; the default eval.limit={limit} gives a 95% CI of ±{_half_width(limit):.1f} points"
    table = Table("train", "eval", "source", "template", "notes", caption=caption, caption_justify="left")
    table.columns.insert(0, Column("task", no_wrap=True))  # names must stay copyable on narrow terminals
    for name, spec in all_tasks().items():
        try:
            summary = summarize(name)
        except UserError as err:
            table.add_row(name, "–", "–", "[red]unavailable[/]", spec.template_origin, str(err))
            continue
        sizes, notes = summary["sizes"], list(summary["notes"])
        if sizes["eval"] and _half_width(sizes["eval"]) > 5:
            notes.insert(
                0,
                f"n={sizes['eval']} eval docs: a score's 95% CI is ±{_half_width(sizes['eval']):.0f} points, differences smaller than that are rarely significant",
            )
        table.add_row(name, str(sizes["train"]), str(sizes["eval"]), summary["source"], spec.template_origin, "; ".join(notes))
    return table


def models() -> Table:
    table = Table("model", "description")
    for name, (description, _) in EMBEDDED_MODELS.items():
        table.add_row(name + (" (default)" if name == DEFAULT_MODEL else ""), description)
    table.add_row("<org/name>", "any Hugging Face causal LM id, e.g. meta-llama/Llama-2-7b-hf (needs the hub or a cached copy)")
    table.add_row("<path>", "a local folder saved with save_pretrained")
    return table
