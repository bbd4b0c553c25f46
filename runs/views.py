from django.shortcuts import get_object_or_404, render

from .models import Dataroom, Harness, Question, Run


def run_list(request):
    runs = Run.objects.select_related("harness", "dataroom", "question")[:200]
    return render(request, "runs/run_list.html", {"runs": runs})


def harness_list(request):
    return render(request, "runs/harness_list.html", {"harnesses": Harness.objects.all()})


def harness_detail(request, version):
    harness = get_object_or_404(Harness, version=version)
    return render(request, "runs/harness_detail.html", {"harness": harness})


def dataroom_list(request):
    return render(request, "runs/dataroom_list.html", {"datarooms": Dataroom.objects.all()})


def dataroom_detail(request, pk):
    dataroom = get_object_or_404(Dataroom, pk=pk)
    files = dataroom.files.only("path", "size")
    return render(request, "runs/dataroom_detail.html", {"dataroom": dataroom, "files": files})


def question_list(request):
    return render(request, "runs/question_list.html", {"questions": Question.objects.all()})
