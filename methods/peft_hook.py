"""Register our PEFT methods as soon as `peft` is imported, without importing it ourselves.

`import adamole_bench` must stay instant (every CLI command pays for it; `import peft` takes ~5 s),
yet `PeftModel.from_pretrained` must know the mixtures whenever the user imports PEFT, before or
after us. So: register now if PEFT is loaded, else wrap PEFT's loader to register right after it runs.

The finder stays installed until PEFT really executes: transformers and lm-eval probe with
`importlib.util.find_spec("peft")`, which asks the finders but loads nothing, and a finder that left
on the first question would miss the import that follows.
"""

import importlib.abc
import importlib.util
import sys

TUNER_MODULE = "adamole_bench.methods.peft_tuner"


def _register() -> None:
    """Importing peft_integration registers. When peft_tuner.py's own `import peft` got here, its classes
    do not exist yet: it registers from its last line instead (`DEFINED`), when they do.

    By its installed name, not `__package__`: test runners may execute the package root a second
    time under another name, and PEFT must get one set of classes."""
    tuner = sys.modules.get(TUNER_MODULE)
    if tuner is None or getattr(tuner, "DEFINED", False):
        importlib.import_module("adamole_bench.methods.peft_integration")


class _RegisterAfter(importlib.abc.Loader):
    """Delegates to PEFT's own loader; registers once `peft/__init__.py` has finished."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self.loader  # leave no trace behind
        _remove_finders()
        _register()

    def __getattr__(self, name):
        return getattr(self.loader, name)


class _PeftFinder(importlib.abc.MetaPathFinder):
    waits_for_peft = True  # how a second copy of this module recognises an installed finder

    def __init__(self):
        self.looking = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "peft" or self.looking:
            return None
        self.looking = True  # the lookup below asks every finder again, us included
        try:
            spec = importlib.util.find_spec("peft")
        finally:
            self.looking = False
        if spec is not None and spec.loader is not None and not isinstance(spec.loader, _RegisterAfter):
            spec.loader = _RegisterAfter(spec.loader)
        return spec


def _remove_finders() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not getattr(finder, "waits_for_peft", False)]


def register_with_peft() -> None:
    if "peft" in sys.modules:
        _register()
    elif not any(getattr(finder, "waits_for_peft", False) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PeftFinder())
