"""The benchmark (`adamole-bench bench`): step time, memory and scoring cost per method, measured side by
side in one process and printed as ratios to LoRA.

May import: `train`, `evaluate`, `settings`, `model`, `store` and the layers below."""
