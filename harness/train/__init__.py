"""Training one adapter: prompts and batches, the training loop (one file, top to bottom), and how a global
batch is split across ranks.

May import: `settings`, `model`, `store`, `methods/`, `tasks/`, `base/`."""
