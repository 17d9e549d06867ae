"""Paper execution: simulated fills of approved orders, positions, cash and PnL."""
