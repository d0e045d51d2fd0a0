"""`adamole-bench bench` after its flags are parsed: method options checked before the model loads, the
bench, its tables, and where the results go (a JSON file, a kind=bench MLflow run)."""

import json
from pathlib import Path

from rich.console import Console

from ...base.errors import UserError
from ...methods.registry import make_config
from ...tasks.registry import get_task
from ..settings.config import check_experiment_name, parse_override
from . import suite


def method_options(overrides: list[str]) -> dict[str, dict]:
    """`adamole.num_experts=4 lora.rank=8` → {method: {option: value}}; anything but a method option is refused."""
    options: dict[str, dict] = {}
    for text in overrides:
        parsed = parse_override(text)
        if "method_options" not in parsed:
            raise UserError(f"bench takes method options only (method.key=value), not '{text}'")
        for method, values in parsed["method_options"].items():
            options.setdefault(method, {}).update(values)
    return options


def bench(settings: dict, overrides: list[str], output: Path | None, experiment: str, console: Console) -> None:
    """`settings`: BenchSettings fields from the flags. Every name and option is checked before the model loads."""
    check_experiment_name(experiment)
    if settings["eval_task"] is not None:
        get_task(settings["eval_task"])  # a typo is one line now, not after the timed steps
    options = method_options(overrides)
    for method in dict.fromkeys([*settings["methods"], *options]):
        make_config(method, options.get(method))  # a bad option is one line before the model loads
    results = suite.run_bench(suite.BenchSettings(**settings, method_options=options))
    for table in suite.render(results):
        console.print(table)
    if output:
        output.write_text(json.dumps(results, indent=2))
        console.print(f"results → {output}")
    console.print(f"MLflow run {suite.log_to_mlflow(results, experiment)} (kind=bench)")
