"""adamole-bench: one training loop, one evaluation (lm-eval), every run in MLflow."""

__version__ = "0.1.0"
