"""The pages. Each view parses, asks `rbac.access`, calls `executions.services`, and answers.

An execution the caller may not see gets the same 404 page as one that does not exist, so a
page never tells an outsider that an id is real.
"""

import json
import re
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from executions import services
from executions.models import Action, Execution, RunnerType, Tenant
from executions.web.forms import ListFilterForm, RunForm
from rbac.access import (
    NotVisible,
    access_execution,
    can_operate,
    can_run,
    tenant_scope,
    visible_executions,
    visible_tenants,
)

# Rows the list page renders (and keeps while new ones arrive live); narrow with the filters.
LIST_LIMIT = 100
# Lines one "load earlier" request returns: a few hundred kilobytes of JSON at most per page,
# and the page's DOM cap (10,000 rows) holds two of them.
LINES_PAGE = 5000
# A ULID is 26 Crockford base32 characters; anything else is answered 404 without a query.
ULID_RE = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}", re.IGNORECASE)


# --- shared -------------------------------------------------------------------------------


def granted_tenants(user) -> QuerySet[Tenant] | None:
    """The tenants `user` sees anything in; None means every tenant."""
    if user.is_superuser or tenant_scope(user) is None:
        return None
    return visible_tenants(user)


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


def _with_labels(execution: Execution) -> Execution:
    execution.duration_label = format_duration(execution.duration_seconds)  # type: ignore[attr-defined]
    return execution


def _shown(value: Any) -> str:
    """A parameter value as the action got it: text as is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _visible(request: HttpRequest, execution_id: str) -> Execution | None:
    if execution_id != "last" and not ULID_RE.fullmatch(execution_id):
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
        "canOperate": operable,
        "api": api,
        "lines": reverse("web:execution-lines", kwargs={"execution_id": "ID"}),
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
        error=services.mask_value(execution.error, execution.secret_values()),
        download=api + "output",
        config=config,
    )
    return render(request, "executions/detail.html", context)


@require_GET
def execution_lines(request: HttpRequest, execution_id: str) -> JsonResponse:
    """`?from=&to=` (inclusive, at most LINES_PAGE): stored chunks for "load earlier".

    The SSE endpoint's window keeps the tail of a log (`replay_limit` cuts the start), so
    lines more than 50,000 before the end can only be read as a range, here.
    """
    if not request.user.is_authenticated:
        return JsonResponse({"detail": "Log in first."}, status=401)
    execution = _visible(request, execution_id)
    if execution is None:
        return JsonResponse({"detail": f"There is no execution {execution_id}."}, status=404)
    try:
        first, last = int(request.GET["from"]), int(request.GET["to"])
    except (KeyError, ValueError):
        return JsonResponse({"detail": "`from` and `to` must be integers."}, status=400)
    if first < 1 or last < first or last - first + 1 > LINES_PAGE:
        detail = f"Need 1 <= from <= to and at most {LINES_PAGE} lines."
        return JsonResponse({"detail": detail}, status=400)
    rows = execution.output.filter(seq__gte=first, seq__lte=last).order_by("seq")
    chunks = [
        {"seq": seq, "output_type": kind, "data": data}
        for seq, kind, data in rows.values_list("seq", "output_type", "data")
    ]
    purged = execution.output_purged_at.isoformat() if execution.output_purged_at else None
    return JsonResponse(
        {"chunks": chunks, "last_seq": execution.last_seq, "output_purged_at": purged}
    )


@require_GET
@login_required
def action_list(request: HttpRequest) -> HttpResponse:
    actions = Action.objects.filter(enabled=True).order_by("ref")
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
        context = page_context(request, action=action, form=None)
        return render(request, "actions/run.html", context, status=403)
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
