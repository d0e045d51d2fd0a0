"""Tasks are data: one YAML per task here, lm-eval task definitions in lm_eval/, helpers in helpers.py."""
