"""`python -m services.risk_manager`."""

from services.common.runtime import main_for
from services.risk_manager.config import RiskSettings
from services.risk_manager.service import RiskService

if __name__ == "__main__":
    main_for(RiskService, RiskSettings)
