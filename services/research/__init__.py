"""Research: backtests, parameter sweeps and run reports over the same pure engines."""
