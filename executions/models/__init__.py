from executions.models.actions import Action, RunnerType
from executions.models.events import ExecutionEvent
from executions.models.executions import Execution, ExecutionStatus
from executions.models.output import OutputChunk, OutputType
from executions.models.tenants import Tenant

__all__ = [
    "Action",
    "Execution",
    "ExecutionEvent",
    "ExecutionStatus",
    "OutputChunk",
    "OutputType",
    "RunnerType",
    "Tenant",
]
