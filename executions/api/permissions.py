"""Who may do what through the API: thin DRF classes over `rbac.access`."""

from rest_framework.permissions import BasePermission

from rbac.access import can_operate


class CanOperate(BasePermission):
    """Cancel and re-run: operator or admin on the execution's tenant."""

    message = "You may see this execution but not cancel or re-run it."

    def has_object_permission(self, request, view, obj) -> bool:
        return can_operate(request.user, obj)
