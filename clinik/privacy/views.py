from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_safe

from clinik.privacy.models import PolicyVersion


@require_safe
def policy(request: HttpRequest) -> HttpResponse:
    current = (
        PolicyVersion.objects.filter(effective_on__lte=timezone.localdate())
        .order_by("-version")
        .first()
    )
    upcoming = PolicyVersion.objects.filter(effective_on__gt=timezone.localdate()).first()
    return render(request, "public/privacy.html", {"policy": current, "upcoming": upcoming})
