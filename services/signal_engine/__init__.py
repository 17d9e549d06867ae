"""Signal engine: momentum ranking of the tracked symbols into buy and sell signals."""
