"""`python -m services.ws_screener`: run the WebSocket screener."""

from services.common.runtime import main_for
from services.ws_screener.config import WsScreenerSettings
from services.ws_screener.service import WsScreenerService

if __name__ == "__main__":
    main_for(WsScreenerService, WsScreenerSettings)
