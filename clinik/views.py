from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe


@require_safe
def landing(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated and "stay" not in request.GET:
        return redirect("dashboard")
    # SITE_URL, not the Host header: the scheme is right (http in development) and a
    # forged Host never ends up in a command people copy.
    return render(request, "public/landing.html", {"site_url": settings.SITE_URL})


@require_safe
def security(request: HttpRequest) -> HttpResponse:
    return render(request, "public/security.html")


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    checks = {"postgres": "ok", "redis": "ok"}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        checks["postgres"] = "unreachable"
    try:
        cache._cache.get_client(write=False).ping()  # type: ignore[attr-defined]
    except Exception:
        checks["redis"] = "unreachable"
    healthy = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if healthy else "unavailable", **checks}
    response = JsonResponse(body, status=200 if healthy else 503)
    # Polled every few seconds: its 503 is not logged per poll (the API logs an outage
    # once, clinik.lib.outage).
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response
