"""`tune`: the same search budget for every method (Optuna's TPE with a pruner, or Ray Tune), scored on a
validation split carved from the training data, then the best settings of each method rerun as a sweep.

May import: every stage below it (`run` and everything under it), `methods/`, `tasks/`, `base/`."""
