"""The regression gate (`adamole-bench check`): rerun what results/ recorded and fail on a changed number.

May import: `run` and every stage below it."""
