"""The run store: MLflow runs, atomic claims, heartbeats and stale runs, and what produced a number
(provenance, the code fingerprint) so a kept result is reused only when nothing that changes it changed.

The lowest stage of the harness: imports only `base/` (and MLflow)."""
