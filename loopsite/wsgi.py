import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loopsite.settings")
application = get_wsgi_application()

# Under `gunicorn --preload` this runs in the master before it forks: objects loaded so far move to a
# generation the collector never walks, so its passes do not write to (and unshare) the workers' pages.
gc.collect()
gc.freeze()
