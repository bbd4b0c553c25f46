"""Settings for Loopsite, read from the environment.

Defaults let `manage.py runserver` work with nothing set: SQLite, Redis on
localhost and the offline stand-in model when no OPENAI_API_KEY is given.
"""

import os
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
SECRET_KEY = env_secret("SECRET_KEY", "dev-only-insecure-key-change-me-in-production")
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
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
]

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

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}"),
        conn_max_age=env_int("DB_CONN_MAX_AGE", 0),
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
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# Celery: Redis is transport only; task state lives on our rows.
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "loopsite")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600)}
CELERY_BEAT_SCHEDULE = {
    "sweep-stale-work": {
        "task": "loopsite.tasks.sweep_stale_work",
        "schedule": env_float("SWEEP_INTERVAL_SECONDS", 30.0),
    },
}

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
# A running row whose heartbeat is older than this is taken to have lost its worker.
WORK_STALE_SECONDS = env_int("WORK_STALE_SECONDS", 90)

# The promptfoo gate (reviews/gate.py): the project's own pinned CLI, a time limit for one
# gate run, the judge's per-request timeout, and whether the gate starts by itself once every
# eval proposal of a cycle is decided.
PROMPTFOO_BIN = env_str("PROMPTFOO_BIN", str(BASE_DIR / "node_modules" / ".bin" / "promptfoo"))
GATE_TIMEOUT_SECONDS = env_int("GATE_TIMEOUT_SECONDS", 600)
GATE_JUDGE_TIMEOUT_SECONDS = env_int("GATE_JUDGE_TIMEOUT_SECONDS", 120)
GATE_POLL_SECONDS = env_int("GATE_POLL_SECONDS", 5)
AUTO_GATE = env_bool("AUTO_GATE", default=True)

# HALO (reviews/optimization.py): the engine's limits, a time limit for one HALO run (the
# child is killed after it), consecutive failed model calls before HALO gives up, and whether
# HALO starts by itself after a cycle's gate succeeds.
HALO_MAXIMUM_DEPTH = env_int("HALO_MAXIMUM_DEPTH", 1)
HALO_MAXIMUM_TURNS = env_int("HALO_MAXIMUM_TURNS", 20)
HALO_MAXIMUM_PARALLEL_SUBAGENTS = env_int("HALO_MAXIMUM_PARALLEL_SUBAGENTS", 2)
HALO_MAX_LLM_FAILURES = env_int("HALO_MAX_LLM_FAILURES", 3)
HALO_TIMEOUT_SECONDS = env_int("HALO_TIMEOUT_SECONDS", 900)
AUTO_HALO = env_bool("AUTO_HALO", default=True)

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
