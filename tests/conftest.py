"""Make `import adamole_bench` resolve to this checkout, installed or not.

The repository root is the package (see pyproject's package-dir), so a plain checkout
has no `adamole_bench/` folder on sys.path; register the root under that name.
"""
import importlib.util
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "adamole_bench", os.path.join(_root, "__init__.py"), submodule_search_locations=[_root]
)
_module = importlib.util.module_from_spec(_spec)
sys.modules["adamole_bench"] = _module
_spec.loader.exec_module(_module)
