def log_sweep_sensitivity(*a, **k):
    pass
