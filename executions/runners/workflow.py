"""`workflow`: tasks run one after another, each as a child execution with its own output.

The entry point is YAML: `tasks: [{name, action, parameters}]`. A parameter value
`"{{ name }}"` takes the workflow's parameter `name` (keeping its type); `{{ name }}` inside
longer text is replaced by its text. A task parameter rendered from a secret parameter of
the workflow is secret in the child too, and every child masks the workflow's secrets in its
output and result. A failed task stops the workflow. Progress lines go to
the workflow's own output as `other`; `result` maps each task to its child's status.
"""

import asyncio
import contextlib
import re
from typing import Any

import yaml

from executions import services
from executions.masking import render_text
from executions.models import Action, Execution, ExecutionStatus
from executions.runners.base import RunContext, RunOutcome
from executions.runners.local import entry_point_path

S = ExecutionStatus
_WHOLE = re.compile(r"^\{\{\s*(\w+)\s*\}\}$")
_INSIDE = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def render(value: Any, context: dict[str, Any]) -> Any:
    """`value` with its `{{ name }}` placeholders filled from `context`.

    Inside longer text a value is rendered as the process would see it (masking.render_text:
    booleans `true`, arrays as JSON), so masking finds it there.
    """
    if isinstance(value, str):
        whole = _WHOLE.match(value)
        if whole and whole.group(1) in context:
            return context[whole.group(1)]
        return _INSIDE.sub(
            lambda m: render_text(context[m.group(1)]) if m.group(1) in context else m.group(0),
            value,
        )
    if isinstance(value, list):
        return [render(v, context) for v in value]
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    return value


def placeholders(value: Any) -> set[str]:
    """The names a task parameter's value refers to with `{{ name }}`."""
    if isinstance(value, str):
        return set(_INSIDE.findall(value))
    if isinstance(value, list):
        return {name for v in value for name in placeholders(v)}
    if isinstance(value, dict):
        return {name for v in value.values() for name in placeholders(v)}
    return set()


def derived_secrets(task_parameters: dict[str, Any], secret_names: set[str]) -> set[str]:
    """The task parameters rendered from one of the workflow's secret parameters."""
    return {name for name, value in task_parameters.items() if placeholders(value) & secret_names}


def load_tasks(ctx: RunContext) -> list[dict[str, Any]]:
    spec = yaml.safe_load(entry_point_path(ctx).read_text()) or {}
    tasks = spec.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise ValueError("the workflow has no `tasks` list")
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or "action" not in task:
            raise ValueError(f"tasks[{i}] needs an `action`")
    return tasks


def _create_child(parent_id: str, task: dict[str, Any]):
    parent = Execution.objects.select_related("tenant").get(pk=parent_id)
    action = Action.objects.get(ref=task["action"])
    template = task.get("parameters") or {}
    return services.create_execution(
        action,
        render(template, parent.parameters),
        tenant=parent.tenant,
        user=parent.created_by,
        parent=parent,
        task_name=task.get("name", task["action"]),
        secret_names=derived_secrets(template, set(parent.secret_parameters)),
    )


async def run_workflow(ctx: RunContext) -> RunOutcome:
    assert ctx.db is not None and ctx.run_child is not None
    tasks = load_tasks(ctx)
    results: dict[str, Any] = {}
    for task in tasks:
        name = task.get("name", task["action"])
        if ctx.canceled.is_set():
            return RunOutcome(S.CANCELED, None, results, "canceled")
        try:
            child = await ctx.db(_create_child, ctx.execution.id, task)
        except Exception as exc:
            ctx.sink.add_text("other", f"Task {name} could not start: {exc}\n")
            return RunOutcome(S.FAILED, 1, results, f"task {name}: {exc}")
        ctx.sink.add_text(
            "other", f"Task {name} started ({child.action_ref}, execution {child.id}).\n"
        )
        watcher = _forward_cancel(ctx, child.id)
        try:
            done = await ctx.run_child(child, ctx.secrets)
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
