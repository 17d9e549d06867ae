"""`python -m services.replay`."""

from services.common.runtime import main_for
from services.replay.config import ReplaySettings
from services.replay.service import ReplayService

if __name__ == "__main__":
    main_for(ReplayService, ReplaySettings)
