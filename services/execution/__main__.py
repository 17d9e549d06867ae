"""`python -m services.execution`."""

from services.common.runtime import main_for
from services.execution.config import ExecutionSettings
from services.execution.service import ExecutionService

if __name__ == "__main__":
    main_for(ExecutionService, ExecutionSettings)
