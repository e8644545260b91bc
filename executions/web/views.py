"""The pages. Each view parses, asks `rbac.access`, calls `executions.services`, and answers.

An execution the caller may not see gets the same 404 page as one that does not exist, so a
page never tells an outsider that an id is real.
"""

import json
import signal
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.html import escape
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods

from executions import services
from executions.models import Action, Execution, OutputType, RunnerType, Tenant
from executions.parameters import distinct_hosts
from executions.problems import is_ulid, problem_response
from executions.web.forms import ListFilterForm, RunForm
from executions.web.search import (
    SEARCH_MAX_CHARS,
    SEARCH_MAX_MATCHES,
    SEARCH_SCAN_ROWS,
    Query,
    family_members,
    search_family,
    search_one,
)
from rbac.access import (
    NotVisible,
    access_execution,
    can_operate,
    can_run,
    granted_tenants,
    visible_executions,
)

# The search bounds, importable from here too (tests name them with the view).
__all__ = ["SEARCH_MAX_CHARS", "SEARCH_MAX_MATCHES", "SEARCH_SCAN_ROWS"]
# Runners that make one child execution per host when given several hosts.
REMOTE_RUNNERS = (RunnerType.REMOTE_SHELL_CMD, RunnerType.REMOTE_SHELL_SCRIPT)
# Rows the list page renders (and keeps while new ones arrive live); narrow with the filters.
LIST_LIMIT = 100
# Lines one "load earlier" request returns: a few hundred kilobytes of JSON at most per page
# (the page loads up to 100,000 lines, output.js MODEL_CAP).
LINES_PAGE = 5000


# --- shared -------------------------------------------------------------------------------


def page_context(request: HttpRequest, **context: Any) -> dict[str, Any]:
    """What base.html's top bar shows: the user's tenants."""
    user = request.user
    if user.is_authenticated:
        tenants = granted_tenants(user)
        label = "all tenants" if tenants is None else ", ".join(t.slug for t in tenants)
        context["nav_tenants"] = label or "no tenant"
    return context


def not_found(request: HttpRequest, what: str = "page") -> HttpResponse:
    return render(request, "404.html", page_context(request, missing=what), status=404)


def format_duration(seconds: float | None) -> str:
    """`0.4 s`, `12.0 s`, `3 min 04 s`, `2 h 05 min` (list.js formats the same way)."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def exit_note(code: int | None) -> str:
    """Why a negative exit code: the process was ended by that signal (execution.js says the same)."""
    if code is None or code >= 0:
        return ""
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"ended by signal {-code}"
    why = {"SIGTERM": " (canceled, timed out or the server stopped)", "SIGKILL": " (killed)"}
    return f"ended by signal {-code}, {name}{why.get(name, '')}"


def with_code(text: str) -> str:
    """An action description with its `backticks` as <code>, everything else escaped."""
    parts = escape(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick stays a backtick
        parts[-2:] = [parts[-2] + "`" + parts[-1]]
    # Safe: every part was escaped above; only the <code> tags are added.
    return mark_safe(
        "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))
    )


def _with_labels(execution: Execution) -> Execution:
    execution.duration_label = format_duration(execution.duration_seconds)  # type: ignore[attr-defined]
    execution.exit_note = exit_note(execution.exit_code)  # type: ignore[attr-defined]
    return execution


def has_sections(execution: Execution) -> bool:
    """Whether the execution's children are sections of its log: a workflow's tasks, or a
    remote run's hosts when there are several (one host runs in the execution itself)."""
    if execution.runner_type == RunnerType.WORKFLOW:
        return True
    if execution.runner_type not in REMOTE_RUNNERS:
        return False
    return len(distinct_hosts(execution.parameters)) > 1


def _shown(value: Any) -> str:
    """A parameter value as the action got it: text as is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _visible(request: HttpRequest, execution_id: str) -> Execution | None:
    if execution_id != "last" and not is_ulid(execution_id):  # 404 without a query
        return None
    try:
        return access_execution(
            request.user, execution_id.upper() if execution_id != "last" else "last"
        )
    except NotVisible:
        return None


# --- pages --------------------------------------------------------------------------------


@require_GET
@login_required
def execution_list(request: HttpRequest) -> HttpResponse:
    user = request.user
    tenants = granted_tenants(user)
    slugs = list(
        (tenants if tenants is not None else Tenant.objects.all()).values_list("slug", flat=True)
    )
    refs = list(Action.objects.values_list("ref", flat=True))
    form = ListFilterForm(request.GET or None, action_refs=refs, tenant_slugs=slugs)
    filters = form.filters()
    executions = visible_executions(user).select_related("tenant")
    if "status" in filters:
        executions = executions.filter(status=filters["status"])
    if "action" in filters:
        executions = executions.filter(action_ref=filters["action"])
    if "tenant" in filters:
        executions = executions.filter(tenant__slug=filters["tenant"])
    rows = [_with_labels(e) for e in executions.order_by("-created_at", "-id")[:LIST_LIMIT]]
    config = {"filters": filters, "limit": LIST_LIMIT}
    return render(
        request,
        "executions/list.html",
        page_context(request, form=form, executions=rows, config=config, limit=LIST_LIMIT),
    )


@require_GET
@login_required
def execution_detail(request: HttpRequest, execution_id: str) -> HttpResponse:
    execution = _visible(request, execution_id)
    if execution is None:
        return not_found(request, "execution")
    if execution_id != execution.id:
        return redirect("web:execution-detail", execution_id=execution.id)  # `last`, lower case
    visible = visible_executions(request.user)
    children = [
        _with_labels(child)
        for child in visible.filter(parent=execution)
        .select_related("tenant")
        .order_by("created_at", "id")
    ]
    parent = visible.filter(pk=execution.parent_id).first() if execution.parent_id else None
    payload = services.execution_payload(execution)
    operable = can_operate(request.user, execution)
    api = reverse("execution-detail", kwargs={"id": execution.id})
    config = {
        "execution": payload,
        "children": [services.execution_payload(child) for child in children],
        "workflow": execution.runner_type == RunnerType.WORKFLOW,
        "sections": has_sections(execution),
        "canOperate": operable,
        "api": api,
        "lines": reverse("web:execution-lines", kwargs={"execution_id": "ID"}),
        "search": reverse("web:execution-search", kwargs={"execution_id": "ID"}),
        "page": reverse("web:execution-detail", kwargs={"execution_id": "ID"}),
    }
    context = page_context(
        request,
        execution=_with_labels(execution),
        payload=payload,
        parameters=[(name, _shown(value)) for name, value in payload["parameters"].items()],
        parent=parent,
        children=children,
        can_operate=operable,
        result=None if payload["result"] is None else json.dumps(payload["result"], indent=2),
        error=services.mask_value(execution.error, services.execution_secrets(execution)),
        download=api + "output",
        config=config,
    )
    return render(request, "executions/detail.html", context)


@require_GET
def execution_lines(request: HttpRequest, execution_id: str) -> HttpResponse:
    """`?from=&to=` (inclusive, at most LINES_PAGE): stored chunks for "load earlier".

    The SSE endpoint's window keeps the tail of a log (`replay_limit` cuts the start), so
    lines more than 50,000 before the end can only be read as a range, here.
    """
    refused = _refused(request, execution_id)
    if isinstance(refused, HttpResponse):
        return refused
    execution = refused
    try:
        first, last = int(request.GET["from"]), int(request.GET["to"])
    except (KeyError, ValueError):
        return _invalid(request, "from", "`from` and `to` must be integers.")
    if first < 1 or last < first or last - first + 1 > LINES_PAGE:
        return _invalid(request, "from", f"Need 1 <= from <= to and at most {LINES_PAGE} lines.")
    rows = execution.output.filter(seq__gte=first, seq__lte=last).order_by("seq")
    chunks = [
        {"seq": seq, "output_type": kind, "data": data, "timestamp": stamp.isoformat()}
        for seq, kind, data, stamp in rows.values_list("seq", "output_type", "data", "timestamp")
    ]
    purged = execution.output_purged_at.isoformat() if execution.output_purged_at else None
    return JsonResponse(
        {"chunks": chunks, "last_seq": execution.last_seq, "output_purged_at": purged}
    )


def _refused(request: HttpRequest, execution_id: str) -> Execution | HttpResponse:
    """The visible execution, or the problem+json answer (401 anonymous, 404 not visible)."""
    if not request.user.is_authenticated:
        return problem_response(request, 401, "Log in first.")
    execution = _visible(request, execution_id)
    if execution is None:
        return problem_response(request, 404, f"There is no execution {execution_id}.")
    return execution


def _invalid(request: HttpRequest, field: str, message: str) -> HttpResponse:
    value = request.GET.get(field)
    error = {"location": f"query.{field}", "message": message, "value": value}
    return problem_response(request, 422, message, errors=[error])


def _search_params(request: HttpRequest) -> tuple[Query, int] | tuple[str, str]:
    """(query, first seq) of a search, or (field, reason) when it is refused."""
    text = request.GET.get("q", "")
    kind = request.GET.get("type", "")
    if not text and not kind:
        return "q", "Give `q` (text to find) or `type` (stdout, stderr or other)."
    if len(text) > SEARCH_MAX_CHARS:
        return "q", f"`q` has at most {SEARCH_MAX_CHARS} characters."
    if kind and kind not in OutputType.values:
        return "type", "`type` is stdout, stderr or other."
    try:
        first = int(request.GET.get("from", "1"))
    except ValueError:
        return "from", "`from` must be an integer."
    return (Query(text, kind), first) if first >= 1 else ("from", "`from` must be at least 1.")


@require_GET
def execution_search(request: HttpRequest, execution_id: str) -> HttpResponse:
    """`?q=&type=&from=`: the seqs of matching lines among at most SEARCH_SCAN_ROWS seqs.

    Case-insensitive substring of the stored text (`icontains`), optionally of one output
    type. Answers `matches` (seqs, at most SEARCH_MAX_MATCHES), `scanned_to` (ask again from
    the next seq) and `last_seq`: the whole log is searched in bounded steps.

    `family=true` searches the execution and its visible descendants (its page's sections),
    from member `in` (default the execution) at seq `from`: `matches` are
    `{execution, seq}`, and `next` is the `{in, from}` to ask with, null at the end.
    """
    refused = _refused(request, execution_id)
    if isinstance(refused, HttpResponse):
        return refused
    execution = refused
    params = _search_params(request)
    if isinstance(params[0], str):
        field, reason = params
        return _invalid(request, field, reason)
    query, first = params
    family = request.GET.get("family", "false")
    if family not in ("true", "false"):
        return _invalid(request, "family", "`family` is true or false.")
    if family == "false":
        if "in" in request.GET:
            return _invalid(request, "in", "`in` goes with `family=true`.")
        return JsonResponse(search_one(execution, query, first))
    members = family_members(execution, visible_executions(request.user))
    start = request.GET.get("in", execution.id).upper()
    if start not in (member_id for member_id, _ in members):
        return _invalid(request, "in", "`in` is the execution or one of its descendants.")
    return JsonResponse(search_family(members, query, start, first))


@require_GET
@login_required
def action_list(request: HttpRequest) -> HttpResponse:
    actions = list(Action.objects.filter(enabled=True).order_by("ref"))
    for action in actions:
        action.description_html = with_code(action.description)  # type: ignore[attr-defined]
    return render(request, "actions/list.html", page_context(request, actions=actions))


@require_http_methods(["GET", "POST"])
@login_required
def action_run(request: HttpRequest, ref: str) -> HttpResponse:
    action = Action.objects.filter(ref=ref, enabled=True).first()
    if action is None:
        return not_found(request, "action")
    granted = granted_tenants(request.user)
    candidates = Tenant.objects.all() if granted is None else granted
    tenants = [t for t in candidates.order_by("slug") if can_run(request.user, action, t)]
    if not tenants:
        action.description_html = with_code(action.description)  # type: ignore[attr-defined]
        context = page_context(request, action=action, form=None)
        return render(request, "actions/run.html", context, status=403)
    action.description_html = with_code(action.description)  # type: ignore[attr-defined]
    form = RunForm(action, tenants, request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            execution = services.create_execution(
                action, form.parameters(), tenant=form.tenant(), user=request.user
            )
        except services.ParameterError as exc:
            form.add_parameter_errors(exc.errors)
        except services.ActionUnavailable as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("web:execution-detail", execution_id=execution.id)
    status = 422 if form.is_bound else 200
    return render(
        request, "actions/run.html", page_context(request, action=action, form=form), status=status
    )
