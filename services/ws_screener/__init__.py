"""WebSocket screener: MEXC spot push streams (protobuf) into throttled market data."""
