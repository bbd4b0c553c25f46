from django.apps import AppConfig


def _blocking_transport(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - runs.model_limits.blocking_transport
    from .model_limits import blocking_transport  # httpx and redis only once a model call is made

    return blocking_transport(*args, **kwargs)


class RunsConfig(AppConfig):
    name = "runs"
    verbose_name = "Runs"

    def ready(self) -> None:
        # loopsite never imports runs/: the limited transport of every model call is handed over here.
        from loopsite import llm

        llm.limited_transport.provide(_blocking_transport)
