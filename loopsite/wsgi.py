import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loopsite.settings")
application = get_wsgi_application()


def _load_views() -> None:
    """Import every view module and compile every URL pattern now. Django does both on a process's
    first request; under `gunicorn --preload` this runs once in the master instead, so no worker's
    first request (a page, or the first OTLP export after a restart) waits about 200 ms for them."""
    from django.urls import reverse

    reverse("home")  # loads the URLconf (every view module) and fills the reverse lookups of every pattern


_load_views()

# Under `gunicorn --preload` this runs in the master before it forks: objects loaded so far move to a
# generation the collector never walks, so its passes do not write to (and unshare) the workers' pages.
gc.collect()
gc.freeze()
