from django.urls import path

from . import views

app_name = "runs"

urlpatterns = [
    path("runs/", views.run_list, name="list"),
    path("harnesses/", views.harness_list, name="harness-list"),
    path("harnesses/<str:version>/", views.harness_detail, name="harness-detail"),
    path("datarooms/", views.dataroom_list, name="dataroom-list"),
    path("datarooms/<int:pk>/", views.dataroom_detail, name="dataroom-detail"),
    path("questions/", views.question_list, name="question-list"),
]
