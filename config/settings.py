"""Suanli settings: one module, read from the environment (see README.md, Configuration)."""

import secrets
from decimal import Decimal
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from csp.constants import NONCE, NONE, SELF
from kombu import Queue

from accounts.databases import replica_settings
from config.embedded import tooling_command
from config.env import env_bool, env_int, env_list, env_networks, env_rates, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("SUANLI_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DJANGO_DEBUG", False)
# `manage.py embedded_db ...`, help and version serve no request and sign nothing: they run as the README writes them
# on a fresh clone, without the key and mail settings that everything else (the web server first) requires with
# debug off.
TOOLING_COMMAND = tooling_command()
SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if DEBUG or env_bool("SUANLI_ALLOW_INSECURE_KEY", False):
        SECRET_KEY = "insecure-dev-key-only-for-local-runs-never-in-production-0123456789"  # noqa: S105
    elif TOOLING_COMMAND:
        SECRET_KEY = secrets.token_urlsafe(50)  # this process's alone: nothing it could sign outlives it
    else:
        raise RuntimeError("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off")

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000")
# Reverse proxies (addresses or networks) whose X-Forwarded-For entries are believed; every per-address rate limit
# counts by the client address read through them (accounts/clientip.py). Empty: REMOTE_ADDR, the header ignored.
TRUSTED_PROXIES = env_networks("TRUSTED_PROXIES")

INSTALLED_APPS = [
    "accounts.apps.SuanliAdminConfig",  # django.contrib.admin with the staff policy (accounts/admin_site.py)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django.contrib.postgres",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "csp",
    # Ours, lowest layer first (each imports only from those above it in this list).
    "accounts",
    "inventory",
    "scheduler",
    "workloads",
    "billing",
    "marketplace",
    # The project itself, above every app (imports anything, imported by none): `manage.py dev` and `embedded_db`.
    "config",
]

MIDDLEWARE = [
    # First: every tenant-owned query made while a request is handled must be scoped (accounts/tenancy.py).
    "accounts.tenancy.TenantGuardMiddleware",
    # Before SecurityMiddleware reads X-Forwarded-Proto: only a trusted proxy's forwarded headers are kept.
    "accounts.clientip.UntrustedForwardedHeadersMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Agent reports (most of the traffic) go from here straight to their view (inventory/agent_api.py).
    "inventory.agent_api.AgentReportMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Before anything that renders a page (the 503 of DatabaseUnavailableMiddleware too): it sets request.csp_nonce.
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "accounts.middleware.OrganizationMiddleware",
    # A page of an object of another of the user's organisations switches to it, not a 404 (marketplace/org_follow.py).
    "marketplace.org_follow.FollowOrganizationMiddleware",
    "accounts.middleware.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.organization",
                "billing.context_processors.funds_banner",
            ],
        },
    },
]

# --- Database: DATABASE_URL, or the embedded PostgreSQL (never SQLite) ---------------------------------
DATABASE_URL = env_str("DATABASE_URL")
if not DATABASE_URL:
    from config.embedded import ensure_running

    DATABASE_URL = ensure_running(BASE_DIR)
DATABASES = {"default": dj_database_url.parse(DATABASE_URL)}
DATABASES["default"]["ENGINE"] = "django.db.backends.postgresql"
# No JIT compilation: it pays off for long analytical queries, not for a web request's. The planner's estimate of the
# storefront's per-offer subqueries crosses jit_above_cost; compiling took 1.6 s of a 2.0 s search (bench/search.py).
_db_options = DATABASES["default"].setdefault("OPTIONS", {})
_db_options["options"] = f"{_db_options.get('options', '')} -c jit=off".strip()
if env_bool("DB_POOL", True):
    # setdefault: keep options the URL carries (sslmode, ...).
    # Health checks: a connection is tested as it leaves the pool, so after a PostgreSQL restart the site recovers by
    # itself; `timeout`: how long a request waits for a connection before it is answered 503.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DB_POOL_MIN", 1),
        "max_size": env_int("DB_POOL_MAX", 10),
        "timeout": env_int("DB_POOL_TIMEOUT", 5),
    }
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True  # Django passes the pool ConnectionPool.check_connection
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 0)
# A streaming replica for offer search and telemetry charts (accounts/databases.py, docs/scaling.md); writes, and every
# other read, stay on DATABASE_URL.
DATABASE_REPLICA_URL = env_str("DATABASE_REPLICA_URL")
if DATABASE_REPLICA_URL:
    DATABASES["replica"] = replica_settings(DATABASE_REPLICA_URL, DATABASES["default"])
DATABASE_ROUTERS = ["accounts.databases.PrimaryReplicaRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache, rate limits and Celery broker; without REDIS_URL a broker that needs no server ---------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    CELERY_BROKER_URL = REDIS_URL
    # A task taken by a worker that dies (acks_late) goes back to the queue after this many seconds.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600)}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CELERY_BROKER_URL = "filesystem://"
    _broker_dir = VAR_DIR / "celery-broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "control_folder": str(VAR_DIR / "celery-control"),
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Every periodic job, in one place. Each is also a management command of the same name.
CELERY_BEAT_SCHEDULE = {
    "check-agents": {"task": "inventory.check_agents", "schedule": 30.0},
    "telemetry-rollup": {"task": "inventory.telemetry_rollup", "schedule": 60.0},
    "telemetry-maintain": {"task": "inventory.telemetry_maintain", "schedule": 3600.0},
    "purge-expired-api-state": {"task": "accounts.purge_expired", "schedule": 3600.0},
    "run-leases": {"task": "scheduler.run_leases", "schedule": 30.0},
    "refresh-listings": {"task": "marketplace.refresh_listings", "schedule": 60.0},
    "scale-leases": {"task": "scheduler.scale_leases", "schedule": 60.0},
    "check-workloads": {"task": "workloads.check_workloads", "schedule": 30.0},
    "wipe-volumes": {"task": "workloads.wipe_volumes", "schedule": 300.0},
    # Hourly, a few minutes past the hour; close-period daily, closing the month before once it is over.
    "meter": {"task": "billing.meter", "schedule": crontab(minute=5)},
    "close-period": {"task": "billing.close_last_period", "schedule": crontab(minute=30, hour=0)},
    "mark-overdue": {"task": "billing.mark_overdue", "schedule": 3600.0},
    "check-funds": {"task": "billing.check_funds", "schedule": 60.0},
}
# A queue per kind of job (docs/scaling.md), so each kind can get workers of its own as the fleet grows
# (`celery -A config worker -Q billing`) and a slow month-end close never holds up agents' liveness or mail. Routed
# by task name; a task not named here goes to the default queue `celery`. A worker started without -Q consumes every
# queue listed here (as docker-compose.yml's and `manage.py dev`'s do), so nothing is stranded.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_ROUTES = {
    "accounts.send_registration_attempt_mail": {"queue": "mail"},
    "inventory.*": {"queue": "fleet"},  # the ingest side: agents' liveness, telemetry roll-ups and partitions
    "scheduler.*": {"queue": "scheduler"},  # lease lifecycle and failover
    "billing.*": {"queue": "billing"},  # meter, close, overdue, funds
    "workloads.*": {"queue": "workloads"},
}
CELERY_TASK_QUEUES = [Queue(name) for name in ("celery", "fleet", "scheduler", "billing", "workloads", "mail")]

# --- Auth ------------------------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_REDIRECT_URL = "/dashboard/"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = env_str("ACCOUNT_EMAIL_VERIFICATION", "mandatory")
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_RATE_LIMITS = {"login_failed": "10/m/ip,5/5m/key", "signup": "20/h/ip", "reset_password": "20/m/ip"}
ACCOUNT_ADAPTER = "accounts.adapters.AccountAdapter"
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = "Suanli"
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
# Backends that never deliver but keep the mail (and its password-reset and verification links) readable on the
# machine: refused with debug off (accounts/checks.py says the same under `check --deploy`).
SUANLI_UNDELIVERED_EMAIL_BACKENDS = (
    "django.core.mail.backends.console.EmailBackend",
    "django.core.mail.backends.locmem.EmailBackend",
    "django.core.mail.backends.filebased.EmailBackend",
)
SUANLI_ALLOW_CONSOLE_EMAIL = env_bool("SUANLI_ALLOW_CONSOLE_EMAIL", False)
if (
    not DEBUG
    and EMAIL_BACKEND in SUANLI_UNDELIVERED_EMAIL_BACKENDS
    and not SUANLI_ALLOW_CONSOLE_EMAIL
    and not TOOLING_COMMAND
):
    raise RuntimeError(
        f"EMAIL_BACKEND is {EMAIL_BACKEND} with DJANGO_DEBUG off: password-reset and verification links would be "
        "written to the log instead of sent. Set EMAIL_BACKEND=django.core.mail.backends.smtp.EmailBackend and "
        "EMAIL_HOST (README.md, Configuration), or SUANLI_ALLOW_CONSOLE_EMAIL=1 for a local experiment."
    )
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Suanli <noreply@localhost>")

# --- API -------------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # No OPTIONS metadata (405): the OpenAPI schema describes every endpoint, and DRF's metadata needs a
    # serializer class on every view.
    "DEFAULT_METADATA_CLASS": None,
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # accounts/parsers.py: nesting over 64 levels and lone surrogates are a 400, not a RecursionError or a 500.
    "DEFAULT_PARSER_CLASSES": ["accounts.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "accounts.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["accounts.filters.FilterBackend"],  # numbers in ASCII digits only
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "accounts.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Suanli API",
    "DESCRIPTION": "GPU rental marketplace: catalogue, servers, agents, offers, leases, billing.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "OrganizationStatusEnum": "accounts.models.Organization.Status",
        "ServerStatusEnum": "inventory.models.Server.Status",
        "LeaseStateEnum": "scheduler.models.LeaseState",
        "PlanEnum": "scheduler.models.Plan",
        # An invoice line's plan: a lease's, or "storage" for a volume's.
        "InvoiceLinePlanEnum": "billing.models.LINE_PLANS",
        "InvoiceStateEnum": "billing.models.Invoice.State",
        "PaymentStateEnum": "billing.models.Payment.State",
        "PayoutStateEnum": "billing.models.Payout.State",
        "StatementStateEnum": "billing.models.ProviderStatement.State",
        # A workload's state: a lease's workloads and a data-access session share it.
        "WorkloadStateEnum": "workloads.models.WorkloadState",
    },
}
# Requests larger than this are refused with 400 before anything is parsed.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 1024 * 1024)
# Rate limits ("count/seconds") for the API's sensitive endpoints, counted atomically in the cache.
SUANLI_RATE_LIMITS = {
    "auth": env_str("RATE_LIMIT_AUTH", "10/60"),
    "register": env_str("RATE_LIMIT_REGISTER", "10/3600"),
    "agent_enroll": env_str("RATE_LIMIT_AGENT_ENROLL", "30/60"),
    # Per agent, accepted reports (10 s interval = 6 a minute; the rest drains a spool after an outage).
    "agent_reports": env_str("RATE_LIMIT_AGENT_REPORTS", "120/60"),
    # Per agent, reads of its desired workloads (a poll every 3 s = 20 a minute).
    "agent_workloads": env_str("RATE_LIMIT_AGENT_WORKLOADS", "240/60"),
    # Per agent, requests of volume moves' transfers (chunks of up to 1 MiB each way, status, sent, received).
    "agent_transfers": env_str("RATE_LIMIT_AGENT_TRANSFERS", "3000/60"),
    # Per client address, agent requests refused for their signature; over it, the bad ones are answered 429
    # (a correctly signed request is never refused for someone else's bad ones).
    "agent_auth_fail": env_str("RATE_LIMIT_AGENT_AUTH_FAIL", "30/60"),
    # Per account (the normalised e-mail, known or not), failed password attempts on the API; over it, every
    # attempt on that account is 429 until the window ends, the right password too.
    "auth_account": env_str("RATE_LIMIT_AUTH_ACCOUNT", "5/300"),
    # Per user, organisations created (API and page).
    "org_create": env_str("RATE_LIMIT_ORG_CREATE", "10/3600"),
}
# A user may have at most this many organisations waiting for staff approval at once.
SUANLI_MAX_PENDING_ORGANIZATIONS = env_int("MAX_PENDING_ORGANIZATIONS", 3)
SUANLI_ENROLLMENT_TOKEN_TTL_HOURS = env_int("ENROLLMENT_TOKEN_TTL_HOURS", 72)
SUANLI_AGENT_SILENT_INTERVALS = env_int("AGENT_SILENT_INTERVALS", 3)
SUANLI_AGENT_INTERVAL_SECONDS = env_int("AGENT_INTERVAL_SECONDS", 10)
# Keys that encrypt agent secrets at rest (newest first); derived from DJANGO_SECRET_KEY when empty.
AGENT_SECRET_KEYS = env_list("AGENT_SECRET_KEYS")
# Agent reports whose signature timestamp is further than this from the platform clock are refused.
SUANLI_AGENT_MAX_SKEW_SECONDS = env_int("AGENT_MAX_SKEW_SECONDS", 300)
# Raw telemetry samples are kept this many days (daily partitions); 1-minute roll-ups and 1-hour roll-ups longer.
SUANLI_TELEMETRY_RAW_DAYS = env_int("TELEMETRY_RAW_DAYS", 7)
SUANLI_TELEMETRY_1M_DAYS = env_int("TELEMETRY_1M_DAYS", 90)
SUANLI_TELEMETRY_1H_DAYS = env_int("TELEMETRY_1H_DAYS", 1095)
# Scheduler. Reservations start at most this many days ahead.
SUANLI_RESERVATION_HORIZON_DAYS = env_int("RESERVATION_HORIZON_DAYS", 90)
# An interruptible lease keeps its cards this long after an on-demand request claims them.
SUANLI_PREEMPTION_NOTICE_SECONDS = env_int("PREEMPTION_NOTICE_SECONDS", 120)
# Workloads: a card-hour lease whose workload is not running this long after it was asked for fails (uncharged);
# a card whose agent has not reported it clean this long after its workload left is drained for the provider.
SUANLI_WORKLOAD_START_TIMEOUT_SECONDS = env_int("WORKLOAD_START_TIMEOUT_SECONDS", 15 * 60)
SUANLI_WORKLOAD_CLEAN_TIMEOUT_SECONDS = env_int("WORKLOAD_CLEAN_TIMEOUT_SECONDS", 10 * 60)
# Workloads stuck this long in pulling/starting/stopping show on the staff fleet page.
SUANLI_WORKLOAD_STUCK_SECONDS = env_int("WORKLOAD_STUCK_SECONDS", 10 * 60)
# Exchange rates used when an offer is priced in another currency than the renter's; fixed into the lease.
SUANLI_FX_RATES = env_rates("FX_RATES", "USD:CNY=7.10,CNY:USD=0.1408")
# Idempotency-Key answers are replayed for this long (never less than 24 h).
SUANLI_IDEMPOTENCY_TTL_HOURS = 24
# Billing. Tax charged on invoices (0.06 = 6 %); the platform's commission on provider gross (per provider
# overridable); days to pay an invoice; whether an overdue invoice stops new leases of its organisation; the
# SLA: a lease whose card time was down more than 1 - SLA_TARGET in a month gets SLA_CREDIT_RATE of its line back.
SUANLI_TAX_RATE = Decimal(env_str("TAX_RATE", "0"))
SUANLI_TAKE_RATE = Decimal(env_str("PLATFORM_TAKE_RATE", "0.15"))
SUANLI_INVOICE_DUE_DAYS = env_int("INVOICE_DUE_DAYS", 15)
SUANLI_OVERDUE_BLOCKS_LEASES = env_bool("OVERDUE_BLOCKS_LEASES", True)
SUANLI_SLA_TARGET = Decimal(env_str("SLA_TARGET", "0.995"))
SUANLI_SLA_CREDIT_RATE = Decimal(env_str("SLA_CREDIT_RATE", "0.10"))
# Balances (billing/balances.py). How an organisation without terms of its own pays: "prepaid" (top up first; the
# default for self-serve customers) or "postpaid" (the monthly invoice, no credit limit until staff set one). A new
# lease must be covered for ADMISSION_MINIMUM_SECONDS of its price (contracts: their first month) on top of that
# much of what already runs; an organisation whose money runs out within FUNDS_NOTICE_SECONDS at its burn is told,
# and its card-hour leases stop once it is out and the notice has had that long. The share of a monthly spend cap at
# which a customer is e-mailed, unless it chose its own; the smallest and largest top-up.
SUANLI_DEFAULT_PAYMENT_MODE = env_str("DEFAULT_PAYMENT_MODE", "prepaid")
SUANLI_ADMISSION_MINIMUM_SECONDS = env_int("ADMISSION_MINIMUM_SECONDS", 3600)
SUANLI_FUNDS_NOTICE_SECONDS = env_int("FUNDS_NOTICE_SECONDS", 3600)
SUANLI_SPEND_ALERTS = (Decimal("0.5"), Decimal("0.9"))
# Volumes (issue 16) of an organisation that ran out of money are kept this many days, then wiped (billing/grace.py).
SUANLI_VOLUME_GRACE_DAYS = env_int("VOLUME_GRACE_DAYS", 15)
# A volume its agent has not made this long after it was asked for is given up (wiped, never billed). At most an
# hour: billing meters a volume once it is made, looking back an hour (billing/metering.py LOOKBACK).
SUANLI_VOLUME_CREATE_TIMEOUT_SECONDS = min(env_int("VOLUME_CREATE_TIMEOUT_SECONDS", 30 * 60), 3600)
# Where the platform stages the chunks of volume moves between the source's agent and the target's (issue 16);
# removed once a move switches or ends. It needs room for the volumes being moved at once.
SUANLI_TRANSFER_DIR = Path(env_str("SUANLI_TRANSFER_DIR", str(VAR_DIR / "transfers")))
SUANLI_TRANSFER_CHUNK_BYTES = env_int("TRANSFER_CHUNK_BYTES", 1024 * 1024)
# A no-GPU data-access session (workloads/data_access.py): a small SSH container with an organisation's volumes on
# their server, ended by itself after DATA_ACCESS_MAX_HOURS; its image, and its price per hour in the offer's
# currency when the offer names none (Offer.data_access_hour_price).
SUANLI_DATA_ACCESS_MAX_HOURS = env_int("DATA_ACCESS_MAX_HOURS", 4)
SUANLI_DATA_ACCESS_IMAGE = env_str("DATA_ACCESS_IMAGE", "suanli/data-access:1")
SUANLI_DATA_ACCESS_HOUR_PRICE = Decimal(env_str("DATA_ACCESS_HOUR_PRICE", "0.05"))
SUANLI_TOP_UP_MIN = Decimal(env_str("TOP_UP_MIN", "1"))
SUANLI_TOP_UP_MAX = Decimal(env_str("TOP_UP_MAX", "1000000"))
# Stripe: the secret key and webhook signing secret; STRIPE_API_BASE points the SDK at another server (a local
# fake Stripe in tests). Without a key the pay button says payments are not configured.
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY")
STRIPE_PUBLISHABLE_KEY = env_str("STRIPE_PUBLISHABLE_KEY")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET")
STRIPE_API_BASE = env_str("STRIPE_API_BASE")
# /metrics (Prometheus) needs `Authorization: Bearer <METRICS_TOKEN>`; unset, only staff sessions may read it.
METRICS_TOKEN = env_str("METRICS_TOKEN")

# --- i18n, time, static -----------------------------------------------------------------------------------
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# Billing periods are calendar months in this zone.
PLATFORM_TIME_ZONE = env_str("PLATFORM_TIME_ZONE", "Asia/Shanghai")

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG and env_bool("STATIC_MANIFEST", True)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# --- Security (production defaults; `manage.py check --deploy` is clean with DJANGO_DEBUG off) --------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# Content-Security-Policy on every response (django-csp). Scripts and styles come from our own origin; the few
# inline <script>/<style> blocks carry `nonce="{{ request.csp_nonce }}"` (the nonce is in the header only on a
# response that used it); no inline event handlers, no eval (htmx runs with allowEval off; our own scripts use
# none). Stripe.js, on the invoice Pay page, loads from js.stripe.com, shows its card fields in frames from there
# and talks to api.stripe.com. Swagger UI at /api/docs/ runs under the same policy (templates/api_docs.html).
_stripe_js = ["https://js.stripe.com", "https://*.js.stripe.com"]
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE, *_stripe_js],
        "style-src": [SELF, NONCE],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF, "https://api.stripe.com"],
        "frame-src": [*_stripe_js, "https://hooks.stripe.com"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
