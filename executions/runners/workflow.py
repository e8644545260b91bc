"""`workflow`: tasks run one after another, each as a child execution with its own output.

The entry point is YAML: `tasks: [{name, action, parameters}]`. A parameter value
`"{{ name }}"` takes the workflow's parameter `name` (keeping its type); `{{ name }}` inside
longer text is replaced by its text. A failed task stops the workflow. Progress lines go to
the workflow's own output as `other`; `result` maps each task to its child's status.
"""

import asyncio
import contextlib
import re
from typing import Any

import yaml

from executions import services
from executions.models import Action, Execution, ExecutionStatus
from executions.runners.base import RunContext, RunOutcome
from executions.runners.local import entry_point_path

S = ExecutionStatus
_WHOLE = re.compile(r"^\{\{\s*(\w+)\s*\}\}$")
_INSIDE = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def render(value: Any, context: dict[str, Any]) -> Any:
    if isinstance(value, str):
        whole = _WHOLE.match(value)
        if whole and whole.group(1) in context:
            return context[whole.group(1)]
        return _INSIDE.sub(lambda m: str(context.get(m.group(1), m.group(0))), value)
    if isinstance(value, list):
        return [render(v, context) for v in value]
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    return value


def load_tasks(ctx: RunContext) -> list[dict[str, Any]]:
    spec = yaml.safe_load(entry_point_path(ctx).read_text()) or {}
    tasks = spec.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise ValueError("the workflow has no `tasks` list")
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or "action" not in task:
            raise ValueError(f"tasks[{i}] needs an `action`")
    return tasks


def _create_child(parent_id: str, task: dict[str, Any], parameters: dict[str, Any]):
    parent = Execution.objects.select_related("tenant").get(pk=parent_id)
    action = Action.objects.get(ref=task["action"])
    child = services.create_execution(
        action,
        parameters,
        tenant=parent.tenant,
        user=parent.created_by,
        parent=parent,
        task_name=task.get("name", task["action"]),
    )
    return child


async def run_workflow(ctx: RunContext) -> RunOutcome:
    assert ctx.db is not None and ctx.run_child is not None
    tasks = load_tasks(ctx)
    results: dict[str, Any] = {}
    for task in tasks:
        name = task.get("name", task["action"])
        if ctx.canceled.is_set():
            return RunOutcome(S.CANCELED, None, results, "canceled")
        parameters = render(task.get("parameters") or {}, ctx.parameters)
        try:
            child = await ctx.db(_create_child, ctx.execution.id, task, parameters)
        except Exception as exc:
            ctx.sink.add_text("other", f"Task {name} could not start: {exc}\n")
            return RunOutcome(S.FAILED, 1, results, f"task {name}: {exc}")
        ctx.sink.add_text(
            "other", f"Task {name} started ({child.action_ref}, execution {child.id}).\n"
        )
        watcher = _forward_cancel(ctx, child.id)
        try:
            done = await ctx.run_child(child)
        finally:
            watcher.cancel()
        results[name] = {"execution": done.id, "status": done.status, "exit_code": done.exit_code}
        ctx.sink.add_text("other", f"Task {name} finished (status={done.status}).\n")
        if done.status != S.SUCCEEDED:
            status = S.CANCELED if ctx.canceled.is_set() else S.FAILED
            return RunOutcome(status, done.exit_code, results, f"task {name} {done.status}")
    return RunOutcome(S.SUCCEEDED, 0, results)


def _forward_cancel(ctx: RunContext, child_id: str):
    """Cancel the running child when the workflow is canceled."""
    db = ctx.db
    assert db is not None

    async def forward() -> None:
        await ctx.canceled.wait()
        child = await db(Execution.objects.get, pk=child_id)
        with contextlib.suppress(services.NotCancelable):
            await db(services.cancel, child)

    return asyncio.create_task(forward())
