"""Scoring a trained model with lm-eval on our tasks (the one evaluation every method gets).

May import: `settings`, `model`, `store`, `methods/`, `tasks/`, `base/`."""
