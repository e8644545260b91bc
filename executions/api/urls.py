from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from executions.api.views import ActionViewSet, ExecutionViewSet

router = SimpleRouter()
router.register("actions", ActionViewSet, basename="action")
router.register("executions", ExecutionViewSet, basename="execution")

urlpatterns = [
    *router.urls,
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
