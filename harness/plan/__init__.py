"""Before a run: what a trial's training needs in memory, from the model's skeleton (no weights).

May import: `settings`, `model`, `train`, `store`, `methods/`, `tasks/`, `base/`."""
