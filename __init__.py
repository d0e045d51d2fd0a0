"""adamole-bench: one training loop, one evaluation (lm-eval), every run in MLflow.

From Python: `adamole_bench.run(methods=[...], tasks=[...]) -> table` runs a sweep as `adamole-bench run`
does, `adamole_bench.report(store=...)` builds the table of a store, `adamole_bench.render(table, "markdown")`.

Saved adapters outside the harness: `adamole_bench.load_adapter(folder or "runs:/<run_id>/adapter")`,
or `PeftModel.from_pretrained(base, folder)` for every built-in method once this package is imported.
"""

__version__ = "0.1.0"

from .methods.peft_hook import register_with_peft

register_with_peft()


def __getattr__(name: str):
    """The entry points, without importing torch for every CLI command."""
    if name in ("load_adapter", "save_adapter", "LoadedAdapter"):
        from .harness.model import adapters  # torch and the adapter stack load only when asked for

        return getattr(adapters, name)
    if name in ("run", "report", "render"):
        from .harness.run import api  # the whole trial stack (seconds), only when asked for

        return getattr(api, name)
    raise AttributeError(f"module 'adamole_bench' has no attribute {name!r}")


__all__ = ["LoadedAdapter", "__version__", "load_adapter", "render", "report", "run", "save_adapter"]
