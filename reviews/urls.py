from django.urls import include, path

from . import api_views, views

app_name = "reviews"

urlpatterns = [
    path("cycles/", views.cycle_list, name="cycle-list"),
    path("cycles/new/", views.cycle_create, name="cycle-create"),
    path("cycles/new/from-traces/", views.cycle_create_from_traces, name="cycle-create-from-traces"),
    path("cycles/<int:pk>/", views.cycle_detail, name="cycle-detail"),
    path("cycles/<int:pk>/next/", views.next_run, name="next-run"),
    path("cycles/<int:pk>/runs/<int:run_pk>/assign/", views.assign, name="assign"),
    path("cycles/<int:pk>/runs/<int:run_pk>/unassign/<int:user_pk>/", views.unassign, name="unassign"),
    path("cycles/<int:pk>/runs/<int:run_pk>/feedback/", views.feedback_edit, name="feedback-edit"),
    path("cycles/<int:pk>/runs/<int:run_pk>/claim-check/", views.claim_check, name="claim-check"),
    path("cycles/<int:pk>/runs/<int:run_pk>/approve/", views.run_approve, name="run-approve"),
    path("feedback/<int:pk>/send-back/", views.send_back, name="send-back"),
    path("feedback/<int:pk>/history/", views.feedback_history, name="feedback-history"),
    path("", include("reviews.inbox_views")),  # the inbox per role and the "next item" links
    path("", include("reviews.eval_views")),  # part 2: generation status, eval proposals, the suite
    path("", include("reviews.gate_views")),  # the gate: gate runs, cycle gate panel, candidate comparison
    path("", include("reviews.optimization_views")),  # HALO, the handoff, the cycle dashboard
    # Closed-loop mode: the read-only JSON API an agent's ingest token reads.
    path("api/v1/agents/<slug:slug>/handoff", api_views.api_handoff, name="api-handoff"),
    path("api/v1/agents/<slug:slug>/suite", api_views.api_suite, name="api-suite"),
    path("api/v1/agents/<slug:slug>/versions/<path:version>/gate", api_views.api_gate, name="api-gate"),
    path("api/<path:rest>", api_views.api_not_found),
]
