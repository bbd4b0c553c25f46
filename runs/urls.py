from django.urls import path

from . import harness_views, ingest_views, views

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
    # OTLP/HTTP's fixed path (exporters append /v1/traces to the endpoint they are given).
    path("v1/traces", ingest_views.otlp_traces, name="otlp-traces"),
    path("agents/", ingest_views.agent_list, name="agent-list"),
    path("agents/<slug:slug>/", ingest_views.agent_detail, name="agent-detail"),
    path("agents/<slug:slug>/rotate/", ingest_views.agent_rotate, name="agent-rotate"),
    path("agents/<slug:slug>/revoke/", ingest_views.agent_revoke, name="agent-revoke"),
    path("agents/<slug:slug>/endpoint/", ingest_views.agent_endpoint, name="agent-endpoint"),
    path("agents/<slug:slug>/webhook/", ingest_views.agent_webhook, name="agent-webhook"),
    path("agents/<slug:slug>/upload/", ingest_views.agent_upload, name="agent-upload"),
    path("questions/", views.question_list, name="question-list"),
    path("questions/<int:pk>/default/", views.question_toggle_default, name="question-toggle-default"),
]
