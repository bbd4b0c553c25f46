"""Settings for Loopsite, read from the environment.

Defaults let `manage.py runserver` work with nothing set: SQLite, Redis on
localhost and the offline stand-in model when no OPENAI_API_KEY is given.
"""

import os
import tempfile
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def env_secret(name: str, default: str = "") -> str:
    """A secret: read once here, never echoed, never passed to agent shells."""
    return os.environ.get(name, default)


DEBUG = env_bool("DJANGO_DEBUG", default=False)
# The key comes from SECRET_KEY, else from the file SECRET_KEY_FILE (var/secret_key, which `make run`
# writes on first start). The built-in development key is refused with DEBUG off (outside the tests).
DEV_SECRET_KEY = "dev-only-insecure-key-change-me-in-production"
SECRET_KEY_FILE = Path(env_str("SECRET_KEY_FILE", str(BASE_DIR / "var" / "secret_key")))
SECRET_KEY = env_secret("SECRET_KEY").strip() or (
    SECRET_KEY_FILE.read_text(encoding="utf-8").strip() if SECRET_KEY_FILE.is_file() else ""
) or DEV_SECRET_KEY
if SECRET_KEY == DEV_SECRET_KEY and not DEBUG and not os.environ.get("PYTEST_VERSION"):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "Loopsite will not start with DEBUG off on the built-in development SECRET_KEY. Set SECRET_KEY "
        f"in the environment, or write a random key to {SECRET_KEY_FILE} (`make run` does this on first "
        "start: python -c 'import secrets; print(secrets.token_urlsafe(50))' > var/secret_key), "
        "or set DJANGO_DEBUG=1 for local development."
    )
ALLOWED_HOSTS = env_str("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",")
CSRF_TRUSTED_ORIGINS = [o for o in env_str("CSRF_TRUSTED_ORIGINS").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials.apps.SimpleAppConfig",
    "loopsite",
    "runs",
    "reviews",
]

MIDDLEWARE = [
    "loopsite.middleware.ServerTiming",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "loopsite.middleware.RejectNulCharacters",
    "django_htmx.middleware.HtmxMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
]

# "evidence": a finished run's rendered answer, artifacts and span tree beside the feedback form
# (reviews.trace.evidence_html), keyed by a fingerprint of what it shows, so never stale. Per process.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "default"},
    "evidence": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "evidence",
                 "TIMEOUT": 3600, "OPTIONS": {"MAX_ENTRIES": 40}},
}

ROOT_URLCONF = "loopsite.urls"
WSGI_APPLICATION = "loopsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": False,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "loopsite.context_processors.loopsite",
            ],
            "builtins": ["template_partials.templatetags.partials"],
            "loaders": [
                (
                    "template_partials.loader.Loader",
                    [
                        (
                            "django.template.loaders.cached.Loader",
                            [
                                "django.template.loaders.filesystem.Loader",
                                "django.template.loaders.app_directories.Loader",
                            ],
                        )
                    ],
                )
            ],
        },
    }
]

_DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}")
DATABASES = {
    # A server database keeps each web thread's connection for DB_CONN_MAX_AGE seconds (checked before
    # reuse): opening one per request cost PostgreSQL pages 10-40 ms under load (bench/reviewers.py). SQLite
    # opens a file, which costs nothing to redo. (Celery's Django fix-up closes a worker's after every task.)
    "default": dj_database_url.parse(
        _DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 0 if _DATABASE_URL.startswith("sqlite") else 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several worker processes write at once: wait for the lock instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not memory, so a test's Celery worker subprocess can open the same database.
    DATABASES["default"]["TEST"] = {"NAME": env_str("TEST_SQLITE_PATH", str(BASE_DIR / "var" / "test.sqlite3"))}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
STATICFILES_DIRS = [BASE_DIR / "loopsite" / "static"]
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(BASE_DIR / "var" / "media")))
MEDIA_URL = "media/"

# Uploads: a dataroom zip may be this large; Django keeps request bodies below this.
DATAROOM_MAX_ZIP_BYTES = env_int("DATAROOM_MAX_ZIP_BYTES", 20 * 1024 * 1024)
DATAROOM_MAX_FILES = env_int("DATAROOM_MAX_FILES", 500)
DATAROOM_MAX_FILE_BYTES = env_int("DATAROOM_MAX_FILE_BYTES", 5 * 1024 * 1024)
DATAROOM_MAX_TOTAL_BYTES = env_int("DATAROOM_MAX_TOTAL_BYTES", 50 * 1024 * 1024)
TRACE_MAX_UPLOAD_BYTES = env_int("TRACE_MAX_UPLOAD_BYTES", 50 * 1024 * 1024)
# OTLP exports one web process reads and stores at once; one more is answered 429 with Retry-After,
# so a burst costs at most this many bodies of memory instead of growing with the queue.
INGEST_MAX_CONCURRENT = env_int("INGEST_MAX_CONCURRENT", 4)
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
# The feedback editor posts five fields a row (reviews/forms.py FeedbackDraft, at most 1,000 rows):
# Django's default of 1,000 fields stopped long feedback at about 200 rows. A request over this
# limit gets a readable 400 (loopsite.views.bad_request) that the autosave shows.
DATA_UPLOAD_MAX_NUMBER_FIELDS = env_int("DATA_UPLOAD_MAX_NUMBER_FIELDS", 6000)

# Celery: Redis is transport only; task state lives on our rows.
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "loopsite")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600)}
# Agent runs have a queue of their own (loopsite.celery.route_task; back-tests and judge calibrations,
# also waiting work, share it), consumed by a worker with a threads pool: a run mostly waits on its
# agent child process, so RUN_CONCURRENCY runs share one worker process whatever the number of CPU
# cores. Everything else stays on the default queue and its prefork pool (WORKER_CONCURRENCY processes).
CELERY_RUN_QUEUE = env_str("CELERY_RUN_QUEUE", f"{CELERY_TASK_DEFAULT_QUEUE}-runs")
CELERY_TASK_ROUTES = ("loopsite.celery.route_task",)
RUN_CONCURRENCY = max(1, env_int("RUN_CONCURRENCY", 16))
WORKER_CONCURRENCY = max(1, env_int("WORKER_CONCURRENCY", 2))
# gunicorn under `make run` (loopsite/management/commands/run_all.py): the app is preloaded once;
# requests are short (pages, HTMX polls), so one process with threads serves a team.
WEB_WORKERS = max(1, env_int("WEB_WORKERS", 1))
WEB_THREADS = max(1, env_int("WEB_THREADS", 8))

# Model access (names and defaults as in the seed notebook).
OPENAI_API_KEY = env_secret("OPENAI_API_KEY")
STANDIN_URL = env_str("LOOPSITE_STANDIN_URL", "http://127.0.0.1:8765/v1")
# With no key, every model call goes to the offline stand-in model.
STANDIN_IN_USE = not OPENAI_API_KEY
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL", STANDIN_URL if STANDIN_IN_USE else "https://api.openai.com/v1")
OPENAI_AGENT_MODEL = env_str("OPENAI_AGENT_MODEL", "gpt-5.5")
OPENAI_ANALYSIS_MODEL = env_str("OPENAI_ANALYSIS_MODEL", "gpt-5.5")
OPENAI_EVAL_GENERATION_MODEL = env_str("OPENAI_EVAL_GENERATION_MODEL", OPENAI_ANALYSIS_MODEL)
OPENAI_JUDGE_MODEL = env_str("OPENAI_JUDGE_MODEL", OPENAI_ANALYSIS_MODEL)
OPENAI_HALO_MODEL = env_str("OPENAI_HALO_MODEL", OPENAI_ANALYSIS_MODEL)

# Agent runs.
RUN_TIMEOUT_SECONDS = env_int("RUN_TIMEOUT_SECONDS", 900)
RUN_MAX_TURNS = env_int("RUN_MAX_TURNS", 30)
RUN_MAX_ATTEMPTS = env_int("RUN_MAX_ATTEMPTS", 2)
# Per model request inside a run: how long to wait and how often the client retries.
RUN_REQUEST_TIMEOUT_SECONDS = env_int("RUN_REQUEST_TIMEOUT_SECONDS", 120)
RUN_MODEL_MAX_RETRIES = env_int("RUN_MODEL_MAX_RETRIES", 2)
# The model endpoint's limits, shared by every worker through Redis (runs/model_limits.py): calls in
# flight at once and requests per minute (0: no limit). A 429 or 503 answer is retried after its
# Retry-After (capped at MODEL_MAX_RETRY_AFTER_SECONDS) up to MODEL_RETRY_LIMIT times per call.
MODEL_MAX_CONCURRENT = max(0, env_int("MODEL_MAX_CONCURRENT", 0))
MODEL_RPM = max(0, env_int("MODEL_RPM", 0))
MODEL_RETRY_LIMIT = max(0, env_int("MODEL_RETRY_LIMIT", 6))
MODEL_MAX_RETRY_AFTER_SECONDS = env_float("MODEL_MAX_RETRY_AFTER_SECONDS", 120.0)
# The agent's shell commands run inside bubblewrap (runs/jail.py). Where it cannot run, runs refuse
# to start, unless LOOPSITE_UNCONFINED_SANDBOX=1: then commands run unconfined and every page says so.
LOOPSITE_BWRAP = env_str("LOOPSITE_BWRAP", "bwrap")
LOOPSITE_UNCONFINED_SANDBOX = env_bool("LOOPSITE_UNCONFINED_SANDBOX", False)
# A running row whose heartbeat is older than this is taken to have lost its worker.
WORK_STALE_SECONDS = env_int("WORK_STALE_SECONDS", 90)
# A queued row not claimed this long after its message was sent is taken to have lost the
# message (e.g. Redis restarted) and is enqueued again.
QUEUED_STALE_SECONDS = env_int("QUEUED_STALE_SECONDS", 60)
# The sweep (loopsite.work.sweep_stale_work) runs this often: a quarter of the shorter of the two
# (at most 30 s), so a lost worker is recovered within WORK_STALE_SECONDS + SWEEP_INTERVAL_SECONDS.
SWEEP_INTERVAL_SECONDS = env_float(
    "SWEEP_INTERVAL_SECONDS", max(1.0, min(30.0, min(WORK_STALE_SECONDS, QUEUED_STALE_SECONDS) / 4))
)
# Each attempt's temporary directory lives under here (loopsite.work.WorkItem.scratch_dir).
WORK_TEMP_ROOT = env_str("WORK_TEMP_ROOT", os.path.join(tempfile.gettempdir(), "loopsite-work"))
CELERY_BEAT_SCHEDULE = {
    "sweep-stale-work": {
        "task": "loopsite.tasks.sweep_stale_work",
        "schedule": SWEEP_INTERVAL_SECONDS,
    },
}
# Beat runs the sweep in its own process, so it never waits in the queue behind the work it recovers.
CELERY_BEAT_SCHEDULER = "loopsite.celery:SweepingScheduler"

# The promptfoo gate (reviews/gate.py): the project's own pinned CLI, a time limit for one
# gate run, the judge's per-request timeout, and whether the gate starts by itself once every
# eval proposal of a cycle is decided.
PROMPTFOO_BIN = env_str("PROMPTFOO_BIN", str(BASE_DIR / "node_modules" / ".bin" / "promptfoo"))
GATE_TIMEOUT_SECONDS = env_int("GATE_TIMEOUT_SECONDS", 600)
GATE_JUDGE_TIMEOUT_SECONDS = env_int("GATE_JUDGE_TIMEOUT_SECONDS", 120)
GATE_POLL_SECONDS = env_int("GATE_POLL_SECONDS", 5)
# Cases the gate judges at once (promptfoo -j).
GATE_CONCURRENCY = max(1, env_int("GATE_CONCURRENCY", 8))
AUTO_GATE = env_bool("AUTO_GATE", default=True)
# Judge calibration (reviews/calibration.py): a judge (model, endpoint, rubric version) is calibrated
# once it has at least JUDGE_MIN_LABELS human-labelled criteria and Cohen's kappa >= JUDGE_MIN_KAPPA
# against them. GATE_REPEATS: how often the gate runs each case (pass only if every repeat passes).
# AUTO_CALIBRATE: refresh the calibration when feedback is approved.
JUDGE_MIN_LABELS = env_int("JUDGE_MIN_LABELS", 20)
JUDGE_MIN_KAPPA = env_float("JUDGE_MIN_KAPPA", 0.6)
GATE_REPEATS = max(1, env_int("GATE_REPEATS", 1))
AUTO_CALIBRATE = env_bool("AUTO_CALIBRATE", default=True)

# HALO (reviews/optimization.py): the engine's limits, a time limit for one HALO run (the
# child is killed after it), consecutive failed model calls before HALO gives up, and whether
# HALO starts by itself after a cycle's gate succeeds.
HALO_MAXIMUM_DEPTH = env_int("HALO_MAXIMUM_DEPTH", 1)
HALO_MAXIMUM_TURNS = env_int("HALO_MAXIMUM_TURNS", 20)
HALO_MAXIMUM_PARALLEL_SUBAGENTS = env_int("HALO_MAXIMUM_PARALLEL_SUBAGENTS", 2)
HALO_MAX_LLM_FAILURES = env_int("HALO_MAX_LLM_FAILURES", 3)
HALO_TIMEOUT_SECONDS = env_int("HALO_TIMEOUT_SECONDS", 900)
AUTO_HALO = env_bool("AUTO_HALO", default=True)

# An agent's webhook (runs/webhooks.py): tries per event, the first retry's delay (doubled for each
# further one: 5, 10, 20, 40 s) and the time limit of one POST.
WEBHOOK_MAX_ATTEMPTS = max(1, env_int("WEBHOOK_MAX_ATTEMPTS", 5))
WEBHOOK_RETRY_SECONDS = env_float("WEBHOOK_RETRY_SECONDS", 5.0)
WEBHOOK_TIMEOUT_SECONDS = env_float("WEBHOOK_TIMEOUT_SECONDS", 10.0)
# Webhooks and agents' HTTP endpoints are never called at link-local, multicast or unspecified addresses
# (loopsite/outbound.py); with 0, loopback and private addresses are refused too.
OUTBOUND_ALLOW_PRIVATE = env_bool("OUTBOUND_ALLOW_PRIVATE", True)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}

if not DEBUG:
    SESSION_COOKIE_HTTPONLY = True
    X_FRAME_OPTIONS = "DENY"

# Behind an HTTPS proxy, LOOPSITE_HTTPS=1 switches on everything that belongs to it at once: secure
# cookies, HSTS, the redirect to https and trusting the proxy's X-Forwarded-Proto header (set it only
# when a proxy that sets that header fronts the app).
LOOPSITE_HTTPS = env_bool("LOOPSITE_HTTPS", default=False)
if LOOPSITE_HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=False)
