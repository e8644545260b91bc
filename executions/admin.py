import json
from typing import Any, cast

from django.contrib import admin
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join

from executions.models import Action, Execution, ExecutionEvent, OutputChunk, Tenant
from executions.problems import is_ulid
from executions.services import execution_secrets, mask_value

# The admin detail shows this many of the newest output lines; the live page has the rest.
ADMIN_OUTPUT_LINES = 200


def _json_block(value: Any) -> str:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False))


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows only services write. No delete either: the confirmation page would list every
    related output row (a million for a long run); `purge_output` removes output."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class CappedCountPaginator(Paginator):
    """Counts at most CAP rows, so a list over a million output rows never runs COUNT(*)."""

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        rows = cast(QuerySet, self.object_list)
        return rows[: self.CAP + 1].count()


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name"]
    search_fields = ["slug", "name"]
    prepopulated_fields = {"slug": ["name"]}


@admin.register(Action)
class ActionAdmin(admin.ModelAdmin):
    list_display = ["ref", "runner_type", "enabled", "description"]
    list_filter = ["pack", "runner_type", "enabled"]
    search_fields = ["ref", "description"]
    readonly_fields = ["ref", "pack", "name", "pack_path", "updated_at"]


@admin.register(Execution)
class ExecutionAdmin(ReadOnlyAdmin):
    list_display = ["id", "action_ref", "tenant", "status", "started_at", "duration", "exit_code"]
    list_filter = ["status", "action_ref", "tenant", "created_at"]
    search_fields = ["action_ref"]
    search_help_text = "An execution id, or part of an action ref."
    list_select_related = ["tenant"]
    show_full_result_count = False
    paginator = CappedCountPaginator
    list_per_page = 50
    fields = readonly_fields = (
        "id",
        "live_page",
        "action_ref",
        "runner_type",
        "tenant",
        "status",
        "exit_code",
        "shown_parameters",
        "shown_result",
        "shown_error",
        "parent",
        "task_name",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
        "duration",
        "last_seq",
        "output_purged_at",
        "recent_output",
    )

    def get_queryset(self, request):
        # The detail shows the tenant too: one query, not two.
        return super().get_queryset(request).select_related("tenant")

    def get_search_results(self, request, queryset, search_term):
        # An id is matched exactly on the primary key; `=id` would be a case-insensitive
        # comparison that no index serves.
        term = search_term.strip()
        if is_ulid(term):  # Crockford base32 is case-insensitive: a pasted id may be lower case
            return queryset.filter(pk=term.upper()), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="duration")
    def duration(self, obj: Execution) -> str:
        seconds = obj.duration_seconds
        return "—" if seconds is None else f"{seconds:.1f} s"

    @admin.display(description="parameters")
    def shown_parameters(self, obj: Execution) -> str:
        return _json_block(obj.masked_parameters())

    @admin.display(description="result")
    def shown_result(self, obj: Execution) -> str:
        # An action may echo a secret into its result; the API masks it, so does the admin.
        return _json_block(mask_value(obj.result, execution_secrets(obj)))

    @admin.display(description="error")
    def shown_error(self, obj: Execution) -> str:
        return mask_value(obj.error, execution_secrets(obj))

    @admin.display(description="live page")
    def live_page(self, obj: Execution) -> str:
        return format_html('<a href="/executions/{}/">watch output live</a>', obj.id)

    @admin.display(description=f"output (last {ADMIN_OUTPUT_LINES} lines)")
    def recent_output(self, obj: Execution) -> str:
        if obj.output_purged_at:
            return f"output purged on {obj.output_purged_at:%Y-%m-%d %H:%M} UTC"
        newest = OutputChunk.objects.filter(execution=obj).order_by("-seq")[:ADMIN_OUTPUT_LINES]
        chunks = list(reversed(newest.values_list("seq", "output_type", "data")))
        if not chunks:
            return "(no output yet)" if not obj.is_finished else "(no output)"
        lines = format_html_join(
            "",
            '<span class="tg-{}" title="#{}">{}</span>',
            ((kind, seq, data) for seq, kind, data in chunks),
        )
        return format_html(
            '<pre class="tg-output" data-status="{}" style="max-height:40em;overflow:auto">'
            "{}</pre>",
            obj.status,
            lines,
        )


@admin.register(OutputChunk)
class OutputChunkAdmin(ReadOnlyAdmin):
    list_display = ["execution_id", "seq", "output_type", "short_data", "timestamp"]
    search_fields = ["execution_id"]
    search_help_text = "An execution id."
    # Newest execution first (ULIDs sort by time), newest line first: the (execution, seq)
    # unique index serves this order, searched or not. No column sorts: over a million rows
    # any other order is a full sort.
    ordering = ["-execution_id", "-seq"]
    sortable_by = ()
    show_full_result_count = False
    paginator = CappedCountPaginator
    fields = readonly_fields = ("execution_id", "seq", "output_type", "data", "timestamp")

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(execution_id=term.upper()), False

    @admin.display(description="data")
    def short_data(self, obj: OutputChunk) -> str:
        return obj.data if len(obj.data) <= 120 else obj.data[:120] + "…"


@admin.register(ExecutionEvent)
class ExecutionEventAdmin(ReadOnlyAdmin):
    list_display = ["id", "event", "execution_id", "tenant", "created_at"]
    list_filter = ["event"]
    ordering = ["-id"]
    show_full_result_count = False
    paginator = CappedCountPaginator
    fields = readonly_fields = ("id", "event", "execution_id", "tenant", "payload", "created_at")
