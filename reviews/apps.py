from django.apps import AppConfig


class ReviewsConfig(AppConfig):
    name = "reviews"
    verbose_name = "Reviews"

    def ready(self) -> None:
        # A run's trace download carries its approved reviews (runs/annotations.py).
        from runs import annotations

        from .approval import run_annotations

        annotations.annotations_for.provide(run_annotations)
        # runs/ never imports reviews/: what runs/ needs from reviews/ is handed over here.
        from runs import handoffs, promotion, work

        from .candidates import latest_comparison, version_pass_rates
        from .models import Cycle
        from .optimization import latest_handoff_text

        promotion.comparison_for.provide(latest_comparison)
        promotion.pass_rate_history.provide(version_pass_rates)
        handoffs.latest_handoff_for.provide(latest_handoff_text)
        work.open_cycle.provide(Cycle.objects.create_for_batch)
        # A waiting (candidate) gate run starts as soon as the last run of its cycle finishes.
        from loopsite.work import work_finished
        from runs.models import Run

        from .gate import release_when_runs_finish

        work_finished.connect(release_when_runs_finish, sender=Run, dispatch_uid="reviews.gate.release_when_runs_finish")
