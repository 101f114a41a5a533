"""The application without the gateway middleware, for bench/gateway_bench.py only."""

from clinik.settings import *  # noqa: F403
from clinik.settings import MIDDLEWARE

MIDDLEWARE = [m for m in MIDDLEWARE if m != "clinik.gateway.middleware.GatewayMiddleware"]
