"""Newsbeat settings: one file, read from the environment through small helpers.

Every variable has a default that makes `make run` work on a bare checkout (SQLite, a Redis
server started by the program); production sets them in `.env` (see `.env.example`).
"""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use 1/0, true/false)")


def env_int(name: str, default: int, minimum: int = 0) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a whole number") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name}={value!r} must be at least {minimum}")
    return number


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)
# Only `make run` may use the development key: `manage.py check --deploy`, which the compose start
# scripts run first, refuses it, an unset key and a short one (project/checks.py).
DEVELOPMENT_SECRET_KEY = "newsbeat-insecure-development-key"
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "") or DEVELOPMENT_SECRET_KEY
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

# Served over HTTPS by a TLS-terminating reverse proxy: redirect plain HTTP, send cookies over
# HTTPS only and tell browsers to use nothing else (HSTS). Off for `make run`.
NEWSBEAT_HTTPS = env_bool("NEWSBEAT_HTTPS", False)
SECURE_SSL_REDIRECT = NEWSBEAT_HTTPS
# Probes and Prometheus ask the container itself over plain HTTP (the compose healthcheck uses
# http://127.0.0.1:8000/health/live/): redirecting them to https:// would fail every probe.
SECURE_REDIRECT_EXEMPT = [r"^health/", r"^metrics$"]
SESSION_COOKIE_SECURE = NEWSBEAT_HTTPS
CSRF_COOKIE_SECURE = NEWSBEAT_HTTPS
SECURE_HSTS_SECONDS = env_int("NEWSBEAT_HSTS_SECONDS", 365 * 24 * 3600 if NEWSBEAT_HTTPS else 0)
# Newsbeat is meant to have a host name of its own (newsbeat.example.com), so covering its
# subdomains and allowing preload binds nothing else of the operator's domain.
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
# The header the proxy sets to say the client used HTTPS, e.g. X-Forwarded-Proto. Only name one
# the proxy always overwrites: a client could otherwise claim HTTPS itself.
NEWSBEAT_PROXY_SSL_HEADER = env_str("NEWSBEAT_PROXY_SSL_HEADER", "")
if NEWSBEAT_PROXY_SSL_HEADER and not NEWSBEAT_PROXY_SSL_HEADER.replace("-", "").isalnum():
    raise ImproperlyConfigured(
        f"NEWSBEAT_PROXY_SSL_HEADER={NEWSBEAT_PROXY_SSL_HEADER!r} is not a header name"
    )
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + NEWSBEAT_PROXY_SSL_HEADER.upper().replace("-", "_"), "https")
    if NEWSBEAT_PROXY_SSL_HEADER
    else None
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "monitoring",
    "pipeline",
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
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Connections are kept open (CONN_MAX_AGE) and checked before reuse: a worker runs thousands of
# tasks, and reconnecting for each audit write made the hook 8x slower (see CELERY_DB_REUSE_MAX).
DATABASE_URL = env_str("DATABASE_URL", "")
if not DATABASE_URL:
    VAR_DIR.mkdir(exist_ok=True)
    DATABASE_URL = f"sqlite:///{VAR_DIR / 'newsbeat.sqlite3'}"
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 600),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share one file: WAL lets readers run beside the writer, IMMEDIATE
    # transactions take the write lock up front instead of failing with "database is locked"
    # half-way, and the timeout waits for a busy writer instead of raising at once.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A dead database must fail a probe within its 2 s budget, not hang it.
    DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = 2

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("NEWSBEAT_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["console"], "level": env_str("NEWSBEAT_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
    },
}

# --- Celery -------------------------------------------------------------------------------------
# https://docs.celeryq.dev/en/stable/userguide/configuration.html
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = REDIS_URL
# Results are kept briefly: the chord that aggregates sentiment after the discussion fetches
# needs them. The audit trail (monitoring.TaskExecution) is the durable record.
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_RESULT_EXPIRES = timedelta(hours=6)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Pickle would let anyone who can write to the broker run code in the worker.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TIMEZONE = TIME_ZONE
# At-least-once: a task is acknowledged after it ran, and redelivered when its worker dies.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A message whose worker died (SIGKILL, OOM, lost host) goes back to the queue once the
# visibility timeout has passed since its delivery, so it must exceed the longest task; every
# worker sweeps for such messages each restore interval.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("NEWSBEAT_VISIBILITY_TIMEOUT", 3600, minimum=1),
    "unacked_restore_interval": env_int("NEWSBEAT_UNACKED_RESTORE_INTERVAL", 10, minimum=1),
    # Sweep on every interval (kombu's default scans only every 10th: about every 100 s).
    "unacked_restore_throttle": 1,
}
CELERY_TASK_SOFT_TIME_LIMIT = env_int("NEWSBEAT_TASK_SOFT_TIME_LIMIT", 240, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int("NEWSBEAT_TASK_TIME_LIMIT", 300, minimum=2)
if CELERY_TASK_TIME_LIMIT <= CELERY_TASK_SOFT_TIME_LIMIT:
    raise ImproperlyConfigured("NEWSBEAT_TASK_TIME_LIMIT must exceed NEWSBEAT_TASK_SOFT_TIME_LIMIT")
# Fetches spend most of their time waiting for feed servers, so they go to a queue of their own,
# consumed by a threads-pool worker; everything else, the CPU-bound aggregation included, stays
# on the default queue and its prefork worker (README, Performance). "celery" puts the fetches
# back on the default queue, for a deployment that runs one kind of worker.
NEWSBEAT_FETCH_QUEUE = env_str("NEWSBEAT_FETCH_QUEUE", "") or "fetch"
CELERY_TASK_ROUTES = {"pipeline.fetch_source": {"queue": NEWSBEAT_FETCH_QUEUE}}
# Flower and `celery events` need task events.
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULER = "monitoring.beat:DatabaseScheduler"
# Write each dispatch's last_run_at to the database at once, so a standby beat that takes over
# knows exactly which slots were already sent.
CELERY_BEAT_SYNC_EVERY = 1
# Celery's Django fixup closes every database connection before and after each task unless this
# is set; then it closes them only every 2 x N tasks. Reconnecting per task made the audit hook
# 8x slower (issue 2).
CELERY_DB_REUSE_MAX = env_int("NEWSBEAT_DB_REUSE_MAX", 1000, minimum=0)

# --- Newsbeat -----------------------------------------------------------------------------------
# The periodic jobs, declared in code and synced into django-celery-beat's tables when beat
# starts. After the first sync the database wins: pause, resume and retime them in the admin.
NEWSBEAT_PERIODIC_JOBS = {
    "poll-news": {
        "task": "pipeline.poll_news",
        "every": timedelta(minutes=env_int("NEWSBEAT_POLL_NEWS_MINUTES", 15, minimum=1)),
    },
    "poll-stories": {
        "task": "pipeline.poll_stories",
        "every": timedelta(minutes=env_int("NEWSBEAT_POLL_STORIES_MINUTES", 60, minimum=1)),
    },
    "reap-lost-executions": {"task": "monitoring.reap_lost", "every": timedelta(minutes=5)},
    "rollup-executions": {"task": "monitoring.rollup_executions", "every": timedelta(minutes=1)},
    "purge-executions": {
        "task": "monitoring.purge_executions",
        "crontab": {"minute": "30", "hour": "3"},
        "expire_seconds": 3600,
    },
}
NEWSBEAT_EXECUTION_RETENTION_DAYS = env_int("NEWSBEAT_EXECUTION_RETENTION_DAYS", 30, minimum=1)
# A periodic job is down once this many of its runs failed in a row (0: only when overdue).
NEWSBEAT_DOWN_AFTER_FAILURES = env_int("NEWSBEAT_DOWN_AFTER_FAILURES", 3, minimum=0)
# The Celery queues whose length /metrics reports: by default the default queue and the fetches'.
NEWSBEAT_METRICS_QUEUES = env_list(
    "NEWSBEAT_METRICS_QUEUES", ",".join(dict.fromkeys(["celery", NEWSBEAT_FETCH_QUEUE]))
)
# Extra panels on /status/: dotted paths to callables taking `now`, returning
# (title, columns, rows). monitoring knows nothing of the pipeline; the pipeline plugs in here.
NEWSBEAT_STATUS_PANELS = ["pipeline.status.source_health"]
# Loopback and private feed addresses are refused unless this is on (tests and `make run`).
# `check --deploy` refuses it unless the override says an intranet deployment means it.
NEWSBEAT_ALLOW_PRIVATE_FEEDS = env_bool("NEWSBEAT_ALLOW_PRIVATE_FEEDS", False)
NEWSBEAT_ALLOW_PRIVATE_FEEDS_IN_PRODUCTION = env_bool(
    "NEWSBEAT_ALLOW_PRIVATE_FEEDS_IN_PRODUCTION", False
)
NEWSBEAT_FETCH_MAX_BYTES = env_int("NEWSBEAT_FETCH_MAX_BYTES", 5 * 1024 * 1024, minimum=1024)
NEWSBEAT_FETCH_CONNECT_TIMEOUT = env_int("NEWSBEAT_FETCH_CONNECT_TIMEOUT", 5, minimum=1)
NEWSBEAT_FETCH_READ_TIMEOUT = env_int("NEWSBEAT_FETCH_READ_TIMEOUT", 15, minimum=1)
NEWSBEAT_FETCH_DEADLINE = env_int("NEWSBEAT_FETCH_DEADLINE", 60, minimum=1)
NEWSBEAT_FETCH_ATTEMPTS = env_int("NEWSBEAT_FETCH_ATTEMPTS", 4, minimum=1)
# First backoff wait in seconds before a retry (doubles each time, with jitter).
NEWSBEAT_FETCH_BACKOFF = 1.0
# The audit hook commits a task's final row without waiting for the disk (synchronous_commit off
# for audit rows only): a PostgreSQL crash within ~0.6 s of a task's end can lose its row. On:
# wait for the disk, which with the audit writer below costs very short tasks ~1 % here, more
# on a busy disk (bench/RESULTS.md).
NEWSBEAT_AUDIT_SYNCHRONOUS_COMMIT = env_bool("NEWSBEAT_AUDIT_SYNCHRONOUS_COMMIT", False)
# On PostgreSQL a worker process sends each final audit row on a connection of its own without
# waiting for the answer, read before the next row (monitoring/audit_writer.py). Off: wait on
# Django's connection, e.g. behind a pooler that cannot keep a prepared statement.
NEWSBEAT_AUDIT_WRITER = env_bool("NEWSBEAT_AUDIT_WRITER", True)
# A message redelivered because its worker died runs at most this many times in all.
NEWSBEAT_MAX_DELIVERIES = env_int("NEWSBEAT_MAX_DELIVERIES", 3, minimum=1)
# Beat leadership: the active beat renews a Redis lock this often; a standby takes over within
# two periods of the active one dying.
NEWSBEAT_BEAT_LOCK_SECONDS = env_int("NEWSBEAT_BEAT_LOCK_SECONDS", 10, minimum=2)
NEWSBEAT_FLOWER_URL = env_str("NEWSBEAT_FLOWER_URL", "http://127.0.0.1:5555")
