from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from executions.api import problems

urlpatterns = [
    path("", RedirectView.as_view(url="/executions/", permanent=False)),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("executions.web.urls")),
    path("api/v1/", include("executions.api.urls")),
    # Last under /api/: an unknown API path answers a problem, never an HTML page.
    re_path(r"^api/", problems.api_not_found, name=problems.CATCH_ALL_URL_NAME),
]

# Under /api/ these answer problem+json; elsewhere Django's own pages.
handler400 = problems.bad_request
handler403 = problems.permission_denied
handler404 = problems.page_not_found
handler500 = problems.server_error
