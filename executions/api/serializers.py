"""What the API says about actions and executions.

An execution is `services.execution_payload()` (what events carry too, secrets masked) plus
its children's ids and links to its output; the declared fields only describe that shape for
the OpenAPI document, and a test keeps them equal to the payload's keys.
"""

from typing import Any

from rest_framework import serializers
from rest_framework.reverse import reverse

from executions import services
from executions.models import Action, Execution, ExecutionStatus, RunnerType
from executions.models.actions import MASK
from rbac.access import visible_executions


class ActionSerializer(serializers.ModelSerializer):
    parameters = serializers.SerializerMethodField(
        help_text="Parameter name → schema (type, default, required, description, secret, enum)."
    )

    class Meta:
        model = Action
        fields = ["ref", "pack", "name", "description", "runner_type", "enabled", "parameters"]

    def get_parameters(self, action: Action) -> dict[str, dict[str, Any]]:
        # A secret parameter's default is itself a secret.
        return {
            name: {**spec, "default": MASK} if spec.get("secret") and "default" in spec else spec
            for name, spec in action.ordered_parameters()
        }


class ExecutionLinksSerializer(serializers.Serializer):
    self = serializers.URLField()
    output = serializers.URLField(help_text="text/plain: output so far, then live until the end")
    output_stream = serializers.URLField(help_text="text/event-stream of this execution's output")
    children = serializers.URLField()


class ExecutionSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="ULID (26 characters, Crockford base32)")
    action_ref = serializers.CharField(help_text="pack.name, frozen when the execution was created")
    runner_type = serializers.ChoiceField(choices=RunnerType.choices)
    tenant = serializers.SlugField(help_text="tenant slug")
    status = serializers.ChoiceField(choices=ExecutionStatus.choices)
    exit_code = serializers.IntegerField(allow_null=True)
    result = serializers.JSONField(allow_null=True, help_text="secret values masked")
    error = serializers.CharField(
        allow_blank=True, help_text="why it failed, timed out or was abandoned; secrets masked"
    )
    parameters = serializers.DictField(help_text="secret parameters shown as ********")
    # Declared fields are popped off the class, so `parent` does not shadow Field.parent.
    parent = serializers.CharField(  # type: ignore[assignment]
        allow_null=True, help_text="the parent workflow's id"
    )
    task_name = serializers.CharField(allow_blank=True, help_text="the workflow task it runs")
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    last_seq = serializers.IntegerField(help_text="the highest output seq stored so far")
    output_purged_at = serializers.DateTimeField(
        allow_null=True, help_text="set when the output was deleted after its TTL"
    )
    children = serializers.ListField(
        child=serializers.CharField(), help_text="child execution ids, oldest first"
    )
    links = ExecutionLinksSerializer()

    def to_representation(self, execution: Execution) -> dict[str, Any]:
        return {
            **services.execution_payload(execution),
            "children": self._children(execution),
            "links": self._links(execution),
        }

    def _children(self, execution: Execution) -> list[str]:
        prefetched = getattr(execution, "visible_children", None)
        if prefetched is None:
            visible = visible_executions(self.context["request"].user)
            children = visible.filter(parent=execution)
            return list(children.order_by("created_at", "id").values_list("id", flat=True))
        return [child.id for child in prefetched]

    def _links(self, execution: Execution) -> dict[str, str]:
        request = self.context["request"]
        base = reverse("execution-detail", kwargs={"id": execution.id}, request=request)
        return {
            "self": base,
            "output": base + "output",
            "output_stream": base + "output/stream",
            "children": base + "children/",
        }


class KnownFieldsOnly(serializers.Serializer):
    """A body with a key the serializer does not declare is refused (422 naming it): a
    misspelt key would otherwise be dropped silently, and the request done without it (a run
    with the action's defaults for "params", a key that never expires for "expires")."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: ["is not a known field"] for name in unknown})
        return attrs


class ExecutionCreateSerializer(KnownFieldsOnly):
    """Run an action: its ref, its parameters, the tenant. An unknown key is refused (422)."""

    action = serializers.CharField(min_length=1, help_text="the action's ref, pack.name")
    parameters = serializers.DictField(
        required=False, default=dict, help_text="checked against the action's parameter schema"
    )
    tenant = serializers.SlugField(
        required=False, help_text="tenant slug; the `default` tenant when omitted"
    )
