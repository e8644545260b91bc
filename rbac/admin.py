"""Granting in the admin: tenant grants on users, groups and tenants; object permissions on
executions and actions (guardian); API keys.

The executions app registers its own Tenant, Execution and Action admins; this module
(loaded after it, INSTALLED_APPS order) re-registers them with access control mixed in,
so that app stays free of rbac concerns.
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.utils import timezone
from guardian.admin import (
    AdminGroupObjectPermissionsForm,
    AdminUserObjectPermissionsForm,
    GuardedModelAdminMixin,
)

from executions import admin as executions_admin
from executions.models import Action, Execution, ExecutionEvent, OutputChunk, Tenant
from rbac.access import (
    ACTION_EXECUTE,
    EXECUTION_VIEW,
    can_grant,
    granting_tenants,
    visible_executions,
    visible_tenants,
)
from rbac.models import ApiKey, TenantGrant

User = get_user_model()


# --- tenant grants --------------------------------------------------------------------


class UserTenantGrantInline(admin.TabularInline):
    model = TenantGrant
    fk_name = "user"
    fields = ["tenant", "role", "created_at"]
    readonly_fields = ["created_at"]
    extra = 0
    verbose_name = "tenant grant"


class GroupTenantGrantInline(UserTenantGrantInline):
    fk_name = "group"


class ExactNameChoiceField(forms.ModelChoiceField):
    """A user or group typed by exact name: a text box, never a list of every name.

    The choices are the whole table, but a TextInput does not render them, and a value is
    looked up only when submitted (one query, exact match)."""

    widget = forms.TextInput

    def __init__(self, queryset, name_field: str, **kwargs):
        super().__init__(queryset, to_field_name=name_field, **kwargs)
        self.error_messages["invalid_choice"] = f"There is no {name_field} with this exact name."


class TenantGrantForm(forms.ModelForm):
    """The tenant admin's grant row. A tenant admin must not learn the names of every user
    and group of the installation (issue 12, item 8): they type the exact username or group
    name of the person they grant to; existing rows show their own grantee's name."""

    user = ExactNameChoiceField(
        User.objects.all(), User.USERNAME_FIELD, required=False, help_text="exact username"
    )
    group = ExactNameChoiceField(
        Group.objects.all(), "name", required=False, help_text="exact group name"
    )

    class Meta:
        model = TenantGrant
        fields = ["user", "group", "role"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.user_id:
            self.initial["user"] = self.instance.user.get_username()
        if self.instance.group_id:
            self.initial["group"] = self.instance.group.name


class TenantGrantOnTenantInline(admin.TabularInline):
    """Grants on one tenant; its admins (not only superusers) manage them here."""

    model = TenantGrant
    form = TenantGrantForm
    fk_name = "tenant"
    fields = ["user", "group", "role", "created_at"]
    readonly_fields = ["created_at"]
    extra = 0
    verbose_name = "grant"

    def _may_grant(self, request, obj) -> bool:
        if obj is None:  # the inline's queryset check: the rows are this tenant's anyway
            return _grants_somewhere(request) or request.user.is_superuser
        return can_grant(request.user, obj)

    def has_view_permission(self, request, obj=None) -> bool:
        return self._may_grant(request, obj)

    def has_add_permission(self, request, obj=None) -> bool:
        return self._may_grant(request, obj)

    def has_change_permission(self, request, obj=None) -> bool:
        return self._may_grant(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return self._may_grant(request, obj)


admin.site.unregister(User)
admin.site.unregister(Group)
admin.site.unregister(Tenant)


@admin.register(User)
class TailgateUserAdmin(UserAdmin):
    inlines = [*UserAdmin.inlines, UserTenantGrantInline]


@admin.register(Group)
class TailgateGroupAdmin(GroupAdmin):
    inlines = [*GroupAdmin.inlines, GroupTenantGrantInline]


@admin.register(Tenant)
class TenantAdmin(executions_admin.TenantAdmin):
    """Superusers edit tenants; a tenant's admins see it and manage its grants."""

    inlines = [TenantGrantOnTenantInline]

    def get_queryset(self, request):
        return super().get_queryset(request) & granting_tenants(request.user)

    def has_module_permission(self, request) -> bool:
        return super().has_module_permission(request) or _grants_somewhere(request)

    def has_view_permission(self, request, obj=None) -> bool:
        if super().has_view_permission(request, obj):
            return True
        return _grants_somewhere(request) if obj is None else can_grant(request.user, obj)

    def has_change_permission(self, request, obj=None) -> bool:
        # Change rights reach the grants inline; the tenant's own fields stay read-only.
        return super().has_change_permission(request, obj) or self.has_view_permission(request, obj)

    def get_readonly_fields(self, request, obj=None):
        if request.user.is_superuser:
            return super().get_readonly_fields(request, obj)
        return ["slug", "name"]

    def get_prepopulated_fields(self, request, obj=None):
        if not request.user.is_superuser:
            return {}
        return super().get_prepopulated_fields(request, obj)


def _grants_somewhere(request) -> bool:
    user = request.user
    return user.is_active and user.is_staff and granting_tenants(user).exists()


# --- object permissions (guardian) -----------------------------------------------------


def _limited_to(form_class, codenames: tuple[str, ...]):
    """Guardian's permission form offering only the permissions that mean something here."""

    class LimitedForm(form_class):
        def get_obj_perms_field_choices(self):
            choices = super().get_obj_perms_field_choices()
            return [choice for choice in choices if choice[0] in codenames]

    return LimitedForm


class GrantingMixin(GuardedModelAdminMixin):
    """Guardian's object-permission pages, open to whoever `may_grant` on the object.

    Guardian gates those pages on `has_change_permission`, which the executions admin
    denies to everyone (executions are read-only); granting is a different right.
    """

    granted_codenames: tuple[str, ...] = ()
    # The change form that admin/rbac/granting_change_form.html (the "Object permissions" link) extends.
    base_change_form_template = "admin/change_form.html"

    def may_grant(self, request, object_pk) -> bool:
        raise NotImplementedError

    def get_obj_perms_manage_user_form(self, request):
        return _limited_to(AdminUserObjectPermissionsForm, self.granted_codenames)

    def get_obj_perms_manage_group_form(self, request):
        return _limited_to(AdminGroupObjectPermissionsForm, self.granted_codenames)

    def _granting(self, request, object_pk) -> None:
        if not self.may_grant(request, object_pk):
            raise PermissionDenied
        request.rbac_granting = True

    def obj_perms_manage_view(self, request, object_pk):
        self._granting(request, object_pk)
        return super().obj_perms_manage_view(request, object_pk)

    def obj_perms_manage_user_view(self, request, object_pk, user_id):
        self._granting(request, object_pk)
        return super().obj_perms_manage_user_view(request, object_pk, user_id)

    def obj_perms_manage_group_view(self, request, object_pk, group_id):
        self._granting(request, object_pk)
        return super().obj_perms_manage_group_view(request, object_pk, group_id)

    def has_change_permission(self, request, obj=None) -> bool:
        if getattr(request, "rbac_granting", False):
            return True
        return super().has_change_permission(request, obj)  # type: ignore[misc]  # ModelAdmin's

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        # Both the add and the change form render through here (the add form has no object,
        # so nothing to grant on yet); the template extends the model's own form.
        context = {
            **context,
            "may_grant": obj is not None and self.may_grant(request, obj.pk),
            "base_change_form": self.base_change_form_template,
        }
        return super().render_change_form(request, context, add, change, form_url, obj)


class VisibleTenantFilter(admin.RelatedFieldListFilter):
    """The tenant filter offers the tenants the user sees, not every tenant's name."""

    def field_choices(self, field, request, model_admin):
        visible = visible_tenants(request.user).values("pk")
        return field.get_choices(include_blank=False, limit_choices_to={"pk__in": visible})


admin.site.unregister(Execution)
admin.site.unregister(Action)


@admin.register(Execution)
class ExecutionAdmin(GrantingMixin, executions_admin.ExecutionAdmin):
    """The executions admin, showing each user only what they may see."""

    # guardian annotates it as an instance variable, django-stubs as a class variable
    change_form_template = "admin/rbac/granting_change_form.html"  # type: ignore[misc]
    base_change_form_template = "admin/executions/execution/change_form.html"
    granted_codenames = (EXECUTION_VIEW,)

    def get_queryset(self, request):
        return super().get_queryset(request) & visible_executions(request.user)

    def get_list_filter(self, request):
        return [
            ("tenant", VisibleTenantFilter) if name == "tenant" else name
            for name in super().get_list_filter(request)
        ]

    def may_grant(self, request, object_pk) -> bool:
        execution = visible_executions(request.user).filter(pk=object_pk).first()
        return execution is not None and can_grant(request.user, execution.tenant)

    def has_module_permission(self, request) -> bool:
        return super().has_module_permission(request) or _sees_executions(request)

    def has_view_permission(self, request, obj=None) -> bool:
        if obj is not None:
            return visible_executions(request.user).filter(pk=obj.pk).exists()
        return super().has_view_permission(request) or _sees_executions(request)


def _sees_executions(request) -> bool:
    user = request.user
    return user.is_active and user.is_staff and visible_executions(user).exists()


@admin.register(Action)
class ActionAdmin(GrantingMixin, executions_admin.ActionAdmin):
    """Actions are shared by all tenants: only who grants on every tenant grants on them."""

    change_form_template = "admin/rbac/granting_change_form.html"  # type: ignore[misc]
    granted_codenames = (ACTION_EXECUTE,)

    def may_grant(self, request, object_pk) -> bool:
        return can_grant(request.user, None)


class VisibleExecutionRowsMixin:
    """Output and event rows only of executions the user sees (for staff given model perms)."""

    def get_queryset(self, request):
        rows = super().get_queryset(request)
        if request.user.is_superuser:
            return rows
        return rows.filter(execution_id__in=visible_executions(request.user).values("pk"))


admin.site.unregister(OutputChunk)
admin.site.unregister(ExecutionEvent)


@admin.register(OutputChunk)
class OutputChunkAdmin(VisibleExecutionRowsMixin, executions_admin.OutputChunkAdmin):
    pass


@admin.register(ExecutionEvent)
class ExecutionEventAdmin(VisibleExecutionRowsMixin, executions_admin.ExecutionEventAdmin):
    pass


# --- API keys ---------------------------------------------------------------------------


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created here (shown once, on the page after saving) and revoked here."""

    list_display = ["key_id", "name", "user", "state", "created_at", "expires_at", "last_used_at"]
    list_filter = ["created_at", "expires_at"]
    list_select_related = ["user"]
    search_fields = ["=key_id", "name", "user__username"]
    autocomplete_fields = ["user"]
    actions = ["revoke"]
    created_template = "admin/rbac/apikey/created.html"

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["user", "name", "expires_at"]
        return ["key_id", "user", "name", "state", "expires_at", "created_at", "last_used_at"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["key_id", "user", "state", "created_at", "last_used_at"]

    @admin.display(description="state")
    def state(self, obj: ApiKey) -> str:
        if obj.revoked_at is not None:
            return f"revoked {obj.revoked_at:%Y-%m-%d %H:%M}"
        if obj.expires_at is not None and obj.expires_at <= timezone.now():
            return "expired"
        return "active" if obj.user.is_active else "user inactive"

    def save_model(self, request, obj, form, change):
        if not change:
            request.rbac_new_api_key = obj.set_new_key()
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        raw_key = getattr(request, "rbac_new_api_key", None)
        if raw_key is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "API key created",
            "api_key": obj,
            "raw_key": raw_key,
        }
        return TemplateResponse(request, self.created_template, context)

    @admin.action(description="Revoke the selected API keys")
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} API key(s).", messages.SUCCESS)
