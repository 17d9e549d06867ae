"""REST screener: polls MEXC spot over REST and publishes closed 1-minute bars as market data."""
