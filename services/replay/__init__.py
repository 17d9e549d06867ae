"""Replay: market data from bundled candle files, the third market data source."""
