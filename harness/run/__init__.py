"""Running a sweep: plan its trials, claim each one, run it (locally or on Ray) on the one loaded base,
train, score, record, and write the sweep's report.

May import: every stage below it (`report`, `train`, `evaluate`, `settings`, `model`, `store`), `methods/`,
`tasks/`, `base/`."""
