from django.urls import path

from executions.web import views

app_name = "web"

urlpatterns = [
    path("executions/", views.execution_list, name="execution-list"),
    # The admin's execution page links here: keep the path.
    path("executions/<str:execution_id>/", views.execution_detail, name="execution-detail"),
    path("executions/<str:execution_id>/lines", views.execution_lines, name="execution-lines"),
    path("executions/<str:execution_id>/search", views.execution_search, name="execution-search"),
    path("actions/", views.action_list, name="action-list"),
    path("actions/<str:ref>/run", views.action_run, name="action-run"),
]
