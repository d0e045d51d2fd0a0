"""Finished runs → tables with intervals and paired tests, every output format, plots, report bundles and
exports of a trained adapter.

May import: `settings`, `model`, `store`, `methods/`, `tasks/`, `base/`."""
