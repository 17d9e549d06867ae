"""Risk manager: six protection layers between signals and orders."""
