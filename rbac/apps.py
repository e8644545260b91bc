from django.apps import AppConfig


class RbacConfig(AppConfig):
    name = "rbac"
    verbose_name = "Access control"

    def ready(self) -> None:
        from rbac import signals

        signals.connect()
