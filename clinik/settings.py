"""ClinikAPI settings: one file, every value from the environment.

Development needs no configuration: the defaults point at PostgreSQL and Redis on
their standard local ports. Production is DEBUG=false plus the variables listed in
the README; anything unsafe for production refuses to start.
"""

from pathlib import Path
from typing import Any, cast

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

from clinik.lib.env import env_bool, env_fernet_keys, env_int, env_list, env_str

django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", True)
TESTING = env_bool("CLINIK_TESTING", False)

_DEV_SECRET = "dev-only-insecure-secret-key-change-me-0123456789abcdefghijklmnopqrstuvwxyz"  # noqa: S105
SECRET_KEY = env_str("SECRET_KEY", _DEV_SECRET if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG=false")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000").rstrip("/")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_htmx",
    "clinik.accounts",
    "clinik.audit",
    "clinik.fhir",
    "clinik.privacy",
    "clinik.keys",
    "clinik.gateway",
    "clinik.usage",
    "clinik.notify",
    "clinik.billing",
    "clinik.subscriptions",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "clinik.gateway.middleware.GatewayMiddleware",  # /fhir/ only; before sessions
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "clinik.urls"
WSGI_APPLICATION = "clinik.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csp",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "clinik.privacy.analytics.browser_config",
            ],
        },
    },
]

# --- Databases -------------------------------------------------------------
# The application connects as an ordinary role (NOSUPERUSER, NOBYPASSRLS); only
# migrations use the owner role (CLINIK_DB_AS_OWNER=1, set by `make`).
DATABASE_URL = env_str("DATABASE_URL", "postgres://clinik@127.0.0.1:5432/clinik")
DATABASE_OWNER_URL = env_str("DATABASE_OWNER_URL", "postgres://clinik_owner@127.0.0.1:5432/clinik")
DB_AS_OWNER = env_bool("CLINIK_DB_AS_OWNER", False)
DATABASE_SSLMODE = env_str("DATABASE_SSLMODE", "prefer" if DEBUG else "require")
if not DEBUG and DATABASE_SSLMODE not in {"require", "verify-ca", "verify-full"}:
    raise ImproperlyConfigured("DATABASE_SSLMODE must require TLS when DEBUG=false")

_app_db = dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60))
_owner_db = dj_database_url.parse(DATABASE_OWNER_URL)
DATABASE_APP_ROLE = _app_db["USER"]
DATABASE_OWNER_CREDENTIALS = {"USER": _owner_db["USER"], "PASSWORD": _owner_db.get("PASSWORD", "")}
_default_db = dict(_app_db)
if DB_AS_OWNER:
    _default_db.update(DATABASE_OWNER_CREDENTIALS)
# Django's PostgreSQL backend with lazy BEGIN, deferred writes and a health check
# without a round trip (clinik/lib/pgbackend/base.py).
_default_db["ENGINE"] = "clinik.lib.pgbackend"
_default_db["OPTIONS"] = {"sslmode": DATABASE_SSLMODE, "connect_timeout": 5}
_default_db["CONN_HEALTH_CHECKS"] = True
_default_db["TEST"] = {"NAME": env_str("TEST_DATABASE_NAME", "test_clinik")}
DATABASES = {"default": _default_db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Connection poolers (Supabase's on port 6543, PgBouncer) -------------------------
# DATABASE_POOLER=transaction: the server session changes between transactions, so
# nothing may outlive one: psycopg never prepares statements (it would after five
# executions), server-side cursors are off (a WITH HOLD cursor lives in the session),
# and the prepared key lookup is refused. Port 6543 is Supabase's transaction pooler.
# Migrations need a session: run them with DATABASE_URL on the direct or session port.
DATABASE_POOLER = env_str("DATABASE_POOLER", "transaction" if _app_db.get("PORT") == 6543 else "")
if DATABASE_POOLER not in {"", "transaction", "session"}:
    raise ImproperlyConfigured(f"DATABASE_POOLER must be transaction or session: {DATABASE_POOLER}")
if DATABASE_POOLER == "transaction":
    _default_db["OPTIONS"] = {
        **cast(dict[str, Any], _default_db["OPTIONS"]),
        "prepare_threshold": None,
    }
    _default_db["DISABLE_SERVER_SIDE_CURSORS"] = True

# --- Redis: cache, rate limits, Celery broker --------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "clinik"),
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "clear-expired-sessions": {
        "task": "clinik.accounts.tasks.clear_expired_sessions",
        "schedule": 3600.0,
    },
    "erase-deleted-fhir-resources": {
        "task": "clinik.fhir.tasks.erase_deleted_resources",
        "schedule": 3600.0,
    },
    "purge-expired-invitations": {
        "task": "clinik.accounts.tasks.purge_expired_invitations",
        "schedule": 3600.0,
    },
    "purge-expired-exports": {
        "task": "clinik.privacy.tasks.purge_expired_exports",
        "schedule": 3600.0,
    },
    "start-due-deletions": {
        "task": "clinik.privacy.tasks.start_due_deletions",
        "schedule": 3600.0,
    },
    "deletion-safety-net": {
        "task": "clinik.privacy.tasks.deletion_safety_net",
        "schedule": 86400.0,
    },
    # --- usage and audit (clinik.usage, clinik.audit) ---
    "drain-request-logs": {
        "task": "clinik.usage.tasks.drain_request_logs",
        "schedule": 5.0,
    },
    "purge-request-logs": {
        "task": "clinik.usage.tasks.purge_request_logs",
        "schedule": 3600.0,
    },
    "seal-audit-trail": {
        "task": "clinik.audit.tasks.seal_audit_trail",
        "schedule": 60.0,
    },
    "purge-expired-audit-records": {
        "task": "clinik.audit.tasks.purge_expired_audit_records",
        "schedule": 86400.0,
    },
    "purge-expired-audit-exports": {
        "task": "clinik.audit.tasks.purge_expired_audit_exports",
        "schedule": 3600.0,
    },
}

# --- FHIR store -------------------------------------------------------------------
FHIR_STORE = env_str("FHIR_STORE", "postgres")
if FHIR_STORE not in {"postgres", "healthlake"}:
    raise ImproperlyConfigured(f"FHIR_STORE must be postgres or healthlake, got {FHIR_STORE!r}")
# The tag wall is never switched off in a running system: only the isolation tests
# turn it off (through Django's settings override) to show RLS holds on its own.
FHIR_TAG_WALL = True
FHIR_ERASE_DELETED_AFTER_DAYS = env_int("FHIR_ERASE_DELETED_AFTER_DAYS", 7, minimum=0)
if FHIR_ERASE_DELETED_AFTER_DAYS > 29:
    raise ImproperlyConfigured("FHIR_ERASE_DELETED_AFTER_DAYS must be at most 29 (policy: 30)")

# --- FHIR store: AWS HealthLake (FHIR_STORE=healthlake; clinik.fhir.store.healthlake) --
# Credentials come from the standard AWS chain (environment, profile, instance role).
HEALTHLAKE_DATASTORE_ID = env_str("HEALTHLAKE_DATASTORE_ID", "")
HEALTHLAKE_REGION = env_str("HEALTHLAKE_REGION", env_str("AWS_REGION", ""))
HEALTHLAKE_ENDPOINT_URL = env_str("HEALTHLAKE_ENDPOINT_URL", "")  # control plane override
HEALTHLAKE_CRUD_PER_SECOND = env_int("HEALTHLAKE_CRUD_PER_SECOND", 3000, minimum=1)
HEALTHLAKE_SEARCH_PER_SECOND = env_int("HEALTHLAKE_SEARCH_PER_SECOND", 100, minimum=1)
HEALTHLAKE_TIMEOUT_MS = env_int("HEALTHLAKE_TIMEOUT_MS", 10000, minimum=100)
HEALTHLAKE_MAX_ATTEMPTS = env_int("HEALTHLAKE_MAX_ATTEMPTS", 4, minimum=1)
HEALTHLAKE_RETRY_BUDGET_MS = env_int("HEALTHLAKE_RETRY_BUDGET_MS", 3000, minimum=0)
if FHIR_STORE == "healthlake" and not (HEALTHLAKE_DATASTORE_ID and HEALTHLAKE_REGION):
    raise ImproperlyConfigured(
        "FHIR_STORE=healthlake needs HEALTHLAKE_DATASTORE_ID and HEALTHLAKE_REGION (or AWS_REGION)"
    )

# --- Data rights: bulk export, account closure and deletion (clinik.privacy) -------
# Export files go to a directory outside static/media, or to S3 when a bucket is set
# (credentials from the standard AWS chain: environment, profile or instance role).
EXPORT_DIR = Path(env_str("EXPORT_DIR", str(BASE_DIR / "var" / "exports")))
EXPORT_S3_BUCKET = env_str("EXPORT_S3_BUCKET", "")
EXPORT_S3_PREFIX = env_str("EXPORT_S3_PREFIX", "exports/")
EXPORT_S3_REGION = env_str("EXPORT_S3_REGION", "")
EXPORT_S3_ENDPOINT_URL = env_str("EXPORT_S3_ENDPOINT_URL", "")
EXPORT_S3_SSE = env_str("EXPORT_S3_SSE", "AES256")
EXPORT_S3_KMS_KEY_ID = env_str("EXPORT_S3_KMS_KEY_ID", "")
if EXPORT_S3_SSE not in {"AES256", "aws:kms", ""}:
    raise ImproperlyConfigured(f"EXPORT_S3_SSE must be AES256 or aws:kms, got {EXPORT_S3_SSE!r}")
if EXPORT_S3_BUCKET and not DEBUG and not EXPORT_S3_SSE:
    raise ImproperlyConfigured("EXPORT_S3_SSE must be AES256 or aws:kms when DEBUG=false")
EXPORT_FILE_MAX_BYTES = env_int("EXPORT_FILE_MAX_BYTES", 256 * 1024 * 1024, minimum=1024)
EXPORT_RETENTION_HOURS = env_int("EXPORT_RETENTION_HOURS", 24, minimum=1)
EXPORT_POLL_MIN_SECONDS = env_int("EXPORT_POLL_MIN_SECONDS", 2, minimum=0)
EXPORT_MAX_RUN_MINUTES = env_int("EXPORT_MAX_RUN_MINUTES", 360, minimum=1)
# Closure and account deletion run this long after the request (cancellable until
# then). Policy §6 promises deletion within 30 days of closure: more is refused.
CLOSURE_GRACE_DAYS = env_int("CLOSURE_GRACE_DAYS", 7, minimum=0)
if CLOSURE_GRACE_DAYS > 30:
    raise ImproperlyConfigured("CLOSURE_GRACE_DAYS must be at most 30 (policy §6: 30 days)")

# --- Accounts, sessions, passwords --------------------------------------------
AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "accounts:signin"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "landing"
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
if TESTING:
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
PASSWORD_RESET_TIMEOUT = 3600

SESSION_IDLE_MINUTES = env_int("SESSION_IDLE_MINUTES", 60, minimum=1)
SESSION_COOKIE_AGE = SESSION_IDLE_MINUTES * 60
SESSION_SAVE_EVERY_REQUEST = True  # sliding idle timeout
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = not DEBUG
SESSION_COOKIE_NAME = "clinik_session"
CSRF_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"

SIGNIN_MAX_FAILURES = env_int("SIGNIN_MAX_FAILURES", 5, minimum=1)
SIGNIN_LOCKOUT_SECONDS = env_int("SIGNIN_LOCKOUT_SECONDS", 900, minimum=1)
INVITATION_DAYS = env_int("INVITATION_DAYS", 7, minimum=1)

# --- Supabase Auth: the dashboard's identity provider when configured -----------------
# Unset (the default): Django's own sign-in. Set: sign-up, sign-in, password reset,
# email change and sign-out go through Supabase Auth; the server verifies each access
# token itself (JWKS, or the legacy HS256 secret) and then runs an ordinary session.
SUPABASE_URL = env_str("SUPABASE_URL", "").rstrip("/")
SUPABASE_ANON_KEY = env_str("SUPABASE_ANON_KEY", "")
SUPABASE_SERVICE_ROLE_KEY = env_str("SUPABASE_SERVICE_ROLE_KEY", "")
SUPABASE_JWKS_URL = env_str(
    "SUPABASE_JWKS_URL", f"{SUPABASE_URL}/auth/v1/.well-known/jwks.json" if SUPABASE_URL else ""
)
SUPABASE_JWT_SECRET = env_str("SUPABASE_JWT_SECRET", "")  # legacy HS256 projects only
SUPABASE_JWT_ISSUER = env_str("SUPABASE_JWT_ISSUER", f"{SUPABASE_URL}/auth/v1")
SUPABASE_JWT_AUDIENCE = env_str("SUPABASE_JWT_AUDIENCE", "authenticated")
SUPABASE_JWKS_CACHE_SECONDS = env_int("SUPABASE_JWKS_CACHE_SECONDS", 600, minimum=1)
SUPABASE_OAUTH_PROVIDERS = env_list("SUPABASE_OAUTH_PROVIDERS", ["github", "google"])
if SUPABASE_URL and not (SUPABASE_ANON_KEY and SUPABASE_SERVICE_ROLE_KEY):
    raise ImproperlyConfigured("SUPABASE_URL needs SUPABASE_ANON_KEY and SUPABASE_SERVICE_ROLE_KEY")

# --- API keys and the gateway (/fhir/) -------------------------------------------
API_KEY_LAST_USED_RESOLUTION_SECONDS = env_int(
    "API_KEY_LAST_USED_RESOLUTION_SECONDS", 300, minimum=0
)
# The key lookup as a prepared statement, once per connection: ~0.1 ms less per API
# request. Off by default: a transaction-mode pooler (Supabase's on port 6543,
# PgBouncer in transaction mode) cannot keep a prepared statement between requests.
API_KEY_PREPARED_LOOKUP = env_bool("API_KEY_PREPARED_LOOKUP", False)
if API_KEY_PREPARED_LOOKUP and DATABASE_POOLER == "transaction":
    raise ImproperlyConfigured("API_KEY_PREPARED_LOOKUP cannot work behind a transaction pooler")
FHIR_MAX_BODY_BYTES = env_int("FHIR_MAX_BODY_BYTES", 5 * 1024 * 1024, minimum=1024)
FHIR_MAX_BUNDLE_BYTES = env_int("FHIR_MAX_BUNDLE_BYTES", 50 * 1024 * 1024, minimum=1024)
# The gateway refuses larger API bodies (413) before they are read; Django's own cap
# must not be lower, or it would turn an accepted bundle into a 400.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(FHIR_MAX_BODY_BYTES, FHIR_MAX_BUNDLE_BYTES)
# Plan defaults (requests per window) until billing provides plans: see limits_for().
RATE_LIMIT_WINDOW_SECONDS = env_int("RATE_LIMIT_WINDOW_SECONDS", 60, minimum=1)
RATE_LIMIT_ORG_REQUESTS = env_int("RATE_LIMIT_ORG_REQUESTS", 6000, minimum=1)
RATE_LIMIT_KEY_REQUESTS = env_int("RATE_LIMIT_KEY_REQUESTS", 6000, minimum=1)
RATE_LIMIT_IP_REQUESTS = env_int("RATE_LIMIT_IP_REQUESTS", 12000, minimum=1)
GATEWAY_REDIS_URL = env_str("GATEWAY_REDIS_URL", REDIS_URL)
GATEWAY_REDIS_TIMEOUT_MS = env_int("GATEWAY_REDIS_TIMEOUT_MS", 200, minimum=1)
GATEWAY_REDIS_RETRY_SECONDS = env_int("GATEWAY_REDIS_RETRY_SECONDS", 5, minimum=0)
GATEWAY_REDIS_WARN_SECONDS = env_int("GATEWAY_REDIS_WARN_SECONDS", 60, minimum=0)
# Proxies (load balancers) in front of the web processes that append the client's
# address to X-Forwarded-For; 0 trusts no header (clinik.lib.http.client_ip).
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0, minimum=0)

# --- Usage: request logs, error logs, rollups (clinik.usage) -------------------------
# Each web process buffers its request records in memory and a background thread
# pushes them to Redis every USAGE_FLUSH_SECONDS (or USAGE_FLUSH_RECORDS); the beat
# job drains Redis into PostgreSQL. If Redis is away the thread writes to
# PostgreSQL directly; if both are, it keeps up to USAGE_BUFFER_MAX_RECORDS.
USAGE_REDIS_URL = env_str("USAGE_REDIS_URL", REDIS_URL)
USAGE_FLUSH_SECONDS = env_int("USAGE_FLUSH_SECONDS", 1, minimum=1)
USAGE_FLUSH_RECORDS = env_int("USAGE_FLUSH_RECORDS", 1000, minimum=1)
USAGE_BUFFER_MAX_RECORDS = env_int("USAGE_BUFFER_MAX_RECORDS", 200_000, minimum=1000)
# Off in tests: they flush and drain explicitly, inside their own transaction.
USAGE_FLUSH_THREAD = env_bool("USAGE_FLUSH_THREAD", not TESTING)
USAGE_RETENTION_DAYS = env_int("USAGE_RETENTION_DAYS", 90, minimum=1)
if USAGE_RETENTION_DAYS > 90:
    raise ImproperlyConfigured("USAGE_RETENTION_DAYS must be at most 90 (policy §3, §6)")

# --- Audit trail (clinik.audit) -------------------------------------------------------
AUDIT_RETENTION_DAYS = env_int("AUDIT_RETENTION_DAYS", 6 * 365 + 2, minimum=6 * 365 + 2)
# Exports of more records than this run as a background job (with progress).
AUDIT_EXPORT_INLINE_MAX = env_int("AUDIT_EXPORT_INLINE_MAX", 5000, minimum=0)

# --- Billing: plans, Stripe, billing records (clinik.billing) -----------------------
# Billing is on only with both Stripe secrets; without them nothing reaches Stripe and
# organizations without an assigned plan keep the RATE_LIMIT_* defaults.
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY", "")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "")
STRIPE_API_BASE = env_str("STRIPE_API_BASE", "")  # empty: the SDK's own
# The high-throughput meter event stream is served from an address of its own.
STRIPE_METER_EVENTS_API_BASE = env_str("STRIPE_METER_EVENTS_API_BASE", "")  # empty: the SDK's
STRIPE_METER_EVENT_NAME = env_str("STRIPE_METER_EVENT_NAME", "api_requests")
BILLING_ENABLED = bool(STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET)
BILLING_DEFAULT_PLAN = env_str("BILLING_DEFAULT_PLAN", "free")
BILLING_GRACE_DAYS = env_int("BILLING_GRACE_DAYS", 7, minimum=0)
BILLING_RECORD_RETENTION_DAYS = env_int(
    "BILLING_RECORD_RETENTION_DAYS", 7 * 365 + 2, minimum=7 * 365 + 2
)
CELERY_BEAT_SCHEDULE |= {
    "report-overage-meters": {
        "task": "clinik.billing.tasks.report_meters",
        "schedule": 3600.0,
    },
    "purge-expired-billing-records": {
        "task": "clinik.billing.tasks.purge_expired_records",
        "schedule": 86400.0,
    },
    "end-billing-grace-periods": {
        "task": "clinik.billing.tasks.end_grace_periods",
        "schedule": 3600.0,
    },
    "sweep-stripe-events": {
        "task": "clinik.billing.tasks.sweep_stripe_events",
        "schedule": 600.0,
    },
    "reconcile-meters-with-stripe": {
        "task": "clinik.billing.tasks.reconcile_meters_with_stripe",
        "schedule": 86400.0,
    },
}

# --- Security headers ----------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "strict-origin-when-cross-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
if env_bool("BEHIND_TLS_PROXY", not DEBUG):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "font-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}

# --- Email -------------------------------------------------------------------
_EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
_SMTP_OPTIONS = {
    "host": env_str("EMAIL_HOST", "localhost"),
    "port": env_int("EMAIL_PORT", 587),
    "username": env_str("EMAIL_HOST_USER", ""),
    "password": env_str("EMAIL_HOST_PASSWORD", ""),
    "use_tls": env_bool("EMAIL_USE_TLS", True),
    "timeout": 10,
}
MAILERS = {
    "default": {
        "BACKEND": _EMAIL_BACKEND,
        "OPTIONS": _SMTP_OPTIONS if _EMAIL_BACKEND.endswith("smtp.EmailBackend") else {},
    }
}
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "ClinikAPI <noreply@clinikapi.com>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
ADMINS: list[tuple[str, str]] = []  # no error emails: they would carry request data

# --- Service emails, incidents, policy notices, analytics (clinik.notify, privacy) ---
# Emails are sent by a Celery task; a failed SMTP attempt is retried after
# EMAIL_RETRY_BASE_SECONDS, doubling each time, EMAIL_MAX_RETRIES times.
EMAIL_MAX_RETRIES = env_int("EMAIL_MAX_RETRIES", 10, minimum=0)
EMAIL_RETRY_BASE_SECONDS = env_int("EMAIL_RETRY_BASE_SECONDS", 30, minimum=0)
# Policy §11: a new privacy policy version is announced at least this long ahead.
POLICY_NOTICE_DAYS = 30
CELERY_BEAT_SCHEDULE["announce-policy-versions"] = {
    "task": "clinik.notify.tasks.announce_policy_versions",
    "schedule": 3600.0,
}
# Product analytics (PostHog). Unset key: nothing is sent and nothing is loaded.
POSTHOG_API_KEY = env_str("POSTHOG_API_KEY", "")
POSTHOG_HOST = env_str("POSTHOG_HOST", "").rstrip("/")
if POSTHOG_API_KEY and not POSTHOG_HOST.startswith(("https://", "http://")):
    raise ImproperlyConfigured("POSTHOG_HOST must be an http(s) URL when POSTHOG_API_KEY is set")
if POSTHOG_API_KEY and POSTHOG_HOST:
    SECURE_CSP["connect-src"] = [CSP.SELF, POSTHOG_HOST]

# --- Static files ----------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = None if DEBUG else BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# --- Bounded API transactions (issue 13) ---------------------------------------------
# Every tenant transaction of an API request runs under these (SET LOCAL, so poolers
# work): a search cancelled by the statement timeout answers 400 too-costly, any other
# cancelled request 503 with Retry-After. Keep them below the HTTP server's timeout.
API_STATEMENT_TIMEOUT_MS = env_int("API_STATEMENT_TIMEOUT_MS", 10_000, minimum=1)
API_LOCK_TIMEOUT_MS = env_int("API_LOCK_TIMEOUT_MS", 5_000, minimum=1)
API_RETRY_AFTER_SECONDS = env_int("API_RETRY_AFTER_SECONDS", 5, minimum=1)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- Logging: never a query string, body or header value --------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"redact": {"()": "clinik.lib.logsafe.RedactExceptionMessages"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # django.request logs request.path (no query string) and the traceback, which
        # the redact filter strips of its message; django.server (runserver) logs the
        # whole request line with its query string, so it is silenced.
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        "django.server": {"handlers": [], "level": "CRITICAL", "propagate": False},
        "django.security": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        # httpx logs every request URL at INFO: Supabase Auth calls stay out of the logs.
        "httpx": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        # urllib3 logs request lines (a HealthLake paging URL carries search values) at
        # DEBUG: never below WARNING, whatever LOG_LEVEL says.
        "urllib3": {"level": "WARNING"},
        # the Stripe SDK logs each request (paths, object ids) at INFO: billing's own
        # audit rows say what changed; its request lines stay out of the logs.
        "stripe": {"level": "WARNING"},
    },
}

# --- Web server and request head limits (issue 15, issue 13 items 4-5) -------------
# The server itself is configured in clinik/serve.py (BIND, WEB_CONCURRENCY,
# WEB_THREADS, WEB_KEEPALIVE_SECONDS). Under /fhir/ the gateway refuses a longer URL
# (414, pointing to POST [type]/_search) or larger headers (431, Authorization
# excluded: an oversized key is the 401 of any bad key) with an OperationOutcome.
FHIR_MAX_URL_BYTES = env_int("FHIR_MAX_URL_BYTES", 16384, minimum=8192)
FHIR_MAX_HEADER_BYTES = env_int("FHIR_MAX_HEADER_BYTES", 16384, minimum=4096)

# --- FHIR Subscriptions, rest-hook (clinik.subscriptions) ----------------------------
# Endpoints on private, loopback or link-local addresses (and plain http to loopback)
# are allowed only here: on by default in development, off in production.
SUBSCRIPTIONS_ALLOW_PRIVATE_ENDPOINTS = env_bool("SUBSCRIPTIONS_ALLOW_PRIVATE_ENDPOINTS", DEBUG)
# Signing secrets are sealed at rest with these Fernet keys (comma-separated): the first
# seals, all unseal (key rotation; then `manage.py subscriptions_reseal`). Development
# without it: a key derived from SECRET_KEY (HKDF). Production refuses to start without.
SUBSCRIPTIONS_SECRET_KEYS = env_fernet_keys("SUBSCRIPTIONS_SECRET_KEYS")
if not DEBUG and not SUBSCRIPTIONS_SECRET_KEYS:
    raise ImproperlyConfigured("SUBSCRIPTIONS_SECRET_KEYS must be set when DEBUG=false")
SUBSCRIPTIONS_CONNECT_TIMEOUT = env_int("SUBSCRIPTIONS_CONNECT_TIMEOUT", 5, minimum=1)
SUBSCRIPTIONS_READ_TIMEOUT = env_int("SUBSCRIPTIONS_READ_TIMEOUT", 10, minimum=1)
# Retries: base * 2^(attempt-1), +0-50 % jitter, capped; ~24 h with the defaults.
SUBSCRIPTIONS_RETRY_BASE_MS = env_int("SUBSCRIPTIONS_RETRY_BASE_MS", 15000, minimum=1)
SUBSCRIPTIONS_RETRY_MAX_MS = env_int("SUBSCRIPTIONS_RETRY_MAX_MS", 3600000, minimum=1)
SUBSCRIPTIONS_MAX_ATTEMPTS = env_int("SUBSCRIPTIONS_MAX_ATTEMPTS", 30, minimum=1)
# A delivery claimed by a worker that died is sent again after this lease.
SUBSCRIPTIONS_LEASE_SECONDS = env_int("SUBSCRIPTIONS_LEASE_SECONDS", 120, minimum=1)
# Deliveries in flight per tenant (one slow endpoint cannot starve other tenants).
SUBSCRIPTIONS_TENANT_CONCURRENCY = env_int("SUBSCRIPTIONS_TENANT_CONCURRENCY", 4, minimum=1)
CELERY_BEAT_SCHEDULE["dispatch-subscriptions"] = {
    "task": "clinik.subscriptions.tasks.dispatch_subscriptions",
    "schedule": 1.0,
}

# --- Retention of the other logs (docs/privacy.md) --------------------------------------
# Email records, processed Stripe webhook events and finished webhook deliveries are
# logs: kept as long as the request logs' ceiling (policy §3, §6: 90 days), then purged.
LOG_RETENTION_DAYS = 90
CELERY_BEAT_SCHEDULE |= {
    "purge-expired-email-records": {
        "task": "clinik.notify.tasks.purge_expired_email_records",
        "schedule": 86400.0,
    },
    "purge-processed-stripe-events": {
        "task": "clinik.billing.tasks.purge_processed_stripe_events",
        "schedule": 86400.0,
    },
    "purge-expired-billing-state": {
        "task": "clinik.billing.tasks.purge_expired_billing_state",
        "schedule": 86400.0,
    },
    "purge-finished-webhook-deliveries": {
        "task": "clinik.subscriptions.tasks.purge_finished_deliveries",
        "schedule": 86400.0,
    },
    "purge-expired-idempotency-records": {
        "task": "clinik.fhir.tasks.purge_expired_idempotency_records",
        "schedule": 3600.0,
    },
}
