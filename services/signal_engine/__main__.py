"""`python -m services.signal_engine`."""

from services.common.runtime import main_for
from services.signal_engine.config import SignalSettings
from services.signal_engine.service import SignalService

if __name__ == "__main__":
    main_for(SignalService, SignalSettings)
