"""`adamole-bench` with the test-only toy-moe method registered (run by test_distributed under torchrun)."""

import sys

from adamole_bench.cli import app
from adamole_bench.tests import toy_moe  # noqa: F401

app(sys.argv[1:])
