"""Production: secrets are required, DEBUG is off, cookies are secure behind the proxy."""

from .base import *  # noqa: F403
from .env import env, env_bool, env_int

SECRET_KEY = env("DJANGO_SECRET_KEY")
DEBUG = False
DATABASES["default"]["PASSWORD"] = env("POSTGRES_PASSWORD")  # noqa: F405

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
USE_X_FORWARDED_HOST = env_bool("DJANGO_USE_X_FORWARDED_HOST", False)
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_CONTENT_TYPE_NOSNIFF = True
# TLS ends at nginx; these stay off unless the site is served over HTTPS only.
SECURE_SSL_REDIRECT = env_bool("DJANGO_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0)
