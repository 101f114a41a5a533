"""Incidents: staff open, update and resolve them in the admin; the owners of every
affected organization (every active one when none is chosen) are emailed at opening
and at resolution, once each (the *_sent_at columns are claimed conditionally)."""

from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from clinik.accounts.models import Membership, Organization, User
from clinik.notify.emails import send
from clinik.notify.models import Incident, IncidentUpdate


def affected_owners(incident: Incident) -> list[User]:
    orgs = Organization.objects.filter(status=Organization.Status.ACTIVE)
    chosen = list(incident.affected_orgs.values_list("pk", flat=True))
    if chosen:
        orgs = orgs.filter(pk__in=chosen)
    return list(
        User.objects.filter(
            is_active=True,
            memberships__role=Membership.Role.OWNER,
            memberships__org__in=orgs,
        )
        .distinct()
        .order_by("pk")
    )


def _context(incident: Incident, message: str) -> dict[str, str]:
    return {
        "title": incident.title,
        "components": ", ".join(incident.component_labels()),
        "message": message,
        "when": f"{timezone.now():%Y-%m-%d %H:%M} UTC",
        "status_path": reverse("status"),
    }


@transaction.atomic
def note_change(incident: Incident, *, message: str) -> None:
    """Called after staff saved the incident (and its affected organizations): adds
    the timeline line and sends the opening or resolution emails not yet sent."""
    now = timezone.now()
    if incident.status == Incident.Status.RESOLVED and incident.resolved_at is None:
        incident.resolved_at = now
    incident.updated_at = now
    incident.save(update_fields=["resolved_at", "updated_at"])
    IncidentUpdate.objects.create(incident=incident, status=incident.status, message=message)
    if Incident.objects.filter(pk=incident.pk, opening_sent_at__isnull=True).update(
        opening_sent_at=now
    ):
        send("service", "incident-opened", affected_owners(incident), _context(incident, message))
    if incident.status == Incident.Status.RESOLVED and Incident.objects.filter(
        pk=incident.pk, resolution_sent_at__isnull=True
    ).update(resolution_sent_at=now):
        send("service", "incident-resolved", affected_owners(incident), _context(incident, message))
