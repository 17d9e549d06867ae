"""`python -m services.rest_screener`: run the REST screener."""

from services.common.runtime import main_for
from services.rest_screener.config import RestScreenerSettings
from services.rest_screener.service import RestScreenerService

if __name__ == "__main__":
    main_for(RestScreenerService, RestScreenerSettings)
