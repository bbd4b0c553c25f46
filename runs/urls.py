from django.urls import path

from . import harness_views, views

app_name = "runs"

urlpatterns = [
    path("runs/", views.run_list, name="list"),
    path("runs/start/", views.run_start, name="start"),
    path("runs/<int:pk>/", views.run_detail, name="detail"),
    path("runs/<int:pk>/spans/<str:span_id>/", views.span_detail, name="span-detail"),
    path("runs/<int:pk>/trace.jsonl", views.trace_jsonl, name="trace-jsonl"),
    path("runs/<int:pk>/artifacts.zip", views.artifacts_zip, name="artifacts-zip"),
    *harness_views.urlpatterns,  # harnesses/: versions, diff, one version, new/edit, promote, new cycle
    path("datarooms/", views.dataroom_list, name="dataroom-list"),
    path("datarooms/upload/", views.dataroom_upload, name="dataroom-upload"),
    path("datarooms/<int:pk>/", views.dataroom_detail, name="dataroom-detail"),
    path("datarooms/<int:pk>/files/<path:path>", views.dataroom_file, name="dataroom-file"),
    path("questions/", views.question_list, name="question-list"),
    path("questions/<int:pk>/default/", views.question_toggle_default, name="question-toggle-default"),
]
