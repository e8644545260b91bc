"""`/api/v1/`: the REST routers, the OpenAPI document and its interactive docs.

The schema and the docs page answer without credentials: they describe the contract, never
data, and code generators and the docs page must be able to read them before any login. Every
other endpoint needs a session or an API key.
"""

from django.http import HttpResponse
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from executions.api.views import ActionViewSet, ExecutionViewSet
from rbac.api import ApiKeyViewSet, TenantViewSet

router = SimpleRouter()
router.register("actions", ActionViewSet, basename="action")
router.register("executions", ExecutionViewSet, basename="execution")
router.register("tenants", TenantViewSet, basename="tenant")
router.register("keys", ApiKeyViewSet, basename="apikey")


class DocsView(SpectacularSwaggerView):
    """Swagger UI. OPTIONS answers the allowed methods itself: DRF's metadata answer would
    be rendered by the page's HTML template renderer, which has no template for it."""

    def options(self, request, *args, **kwargs) -> HttpResponse:  # type: ignore[override]
        return HttpResponse(status=200, headers={"Allow": "GET, HEAD, OPTIONS"})


urlpatterns = [
    *router.urls,
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", DocsView.as_view(url_name="api-schema"), name="api-docs"),
]
