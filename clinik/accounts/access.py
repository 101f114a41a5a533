"""Access helpers for dashboard views: fetch the caller's membership inside the
organization named in the URL (404 for outsiders), with no side effects."""

from typing import Any
from uuid import UUID

from django.core.exceptions import PermissionDenied
from django.http import Http404

from clinik.accounts.models import Membership
from clinik.lib.http import AuthedHttpRequest


def get_membership(request: AuthedHttpRequest, org_id: UUID) -> Membership:
    """The caller's membership in org_id; 404 for anyone outside it."""
    try:
        membership = Membership.objects.select_related("org").get(org_id=org_id, user=request.user)
    except Membership.DoesNotExist:
        raise Http404 from None
    if membership.org.status == membership.org.Status.CLOSED:
        raise Http404
    return membership


def get_managing_membership(request: AuthedHttpRequest, org_id: UUID) -> Membership:
    """Like get_membership, but only owners and admins pass (403 for developers)."""
    membership = get_membership(request, org_id)
    if not membership.can_manage:
        raise PermissionDenied
    return membership


def dashboard_context(
    request: AuthedHttpRequest, membership: Membership, active: str, **extra: Any
) -> dict[str, Any]:
    """Context of a dashboard page. Rendering a page of an organization makes it the
    one /dashboard/ returns to next time."""
    request.session["org_id"] = str(membership.org_id)
    memberships = Membership.objects.filter(user=request.user).select_related("org")
    return {
        "org": membership.org,
        "membership": membership,
        "memberships": memberships,
        "active": active,
        **extra,
    }
