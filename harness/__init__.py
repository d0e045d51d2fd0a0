"""The harness: config → sweep plan → (model + method) → train → evaluate → record → report."""
