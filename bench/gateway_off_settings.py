"""bench/gateway_settings.py without the gateway middleware, for bench/gateway_bench.py."""

from bench.gateway_settings import *  # noqa: F403
from bench.gateway_settings import MIDDLEWARE

MIDDLEWARE = [m for m in MIDDLEWARE if m != "clinik.gateway.middleware.GatewayMiddleware"]
