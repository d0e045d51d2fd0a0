"""Settings: defaults ← YAML ← flags ← key=value, checked before any work; the grid of swept settings; the
resolved settings of each trial and their hash.

May import: `model` (model names, precision), `methods/`, `tasks/`, `base/`."""
