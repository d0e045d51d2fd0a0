"""Fine-tuning methods. The harness reaches them only through `registry` (build_method, Method)."""
