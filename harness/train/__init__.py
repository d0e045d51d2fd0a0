"""Training one adapter: prompts and batches, the training loop (one file, top to bottom), how a global
batch is split across ranks, and step checkpoints (one file per rank under several processes).

May import: `settings`, `model`, `store`, `methods/`, `tasks/`, `base/`."""
