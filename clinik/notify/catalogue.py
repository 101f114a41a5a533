"""Every email ClinikAPI sends: its kind, when it goes out, and how it is rendered
(subject / text / HTML template triplets under templates/emails/)."""

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.template.loader import render_to_string


@dataclass(frozen=True)
class Email:
    kind: str
    when: str


# Every email we send: its kind and when it goes out. The /emails page and the README
# list them; a test checks that each has its three templates.
CATALOGUE: dict[str, Email] = {
    "key-created": Email("security", "an API key is created (to the organization's owners)"),
    "key-revoked": Email("security", "an API key is revoked (to the owners)"),
    "signin-new-browser": Email(
        "security", "you sign in from a browser or network not seen for you in 90 days"
    ),
    "signin-locked": Email("security", "sign-in to your account is locked after failed attempts"),
    "password-reset": Email("security", "you ask for a password reset link"),
    "password-changed": Email("security", "your password is changed or reset"),
    "security-alert": Email(
        "security", "with Supabase Auth: a sign-in method is linked, or your email changes"
    ),
    "email-changed": Email("security", "your sign-in email is changed (to the old and new one)"),
    "member-added": Email("security", "someone joins an organization (to its owners)"),
    "member-removed": Email(
        "security", "a member is removed or leaves (to the owners and the member)"
    ),
    "owner-granted": Email("security", "someone is made an owner (to every owner)"),
    "closure-requested": Email("security", "closure of an organization is requested (members)"),
    "closure-cancelled": Email("security", "a pending closure is cancelled (to the members)"),
    "closure-completed": Email("service", "a closed organization's data is deleted"),
    "account-deletion-requested": Email("security", "you ask for your account to be deleted"),
    "account-deletion-blocked": Email(
        "security", "your account deletion is stopped (you are an organization's last owner)"
    ),
    "account-deletion-completed": Email("service", "your account is erased"),
    "invitation": Email("service", "someone invites you to an organization"),
    "incident-opened": Email("service", "an outage affecting your organization begins"),
    "incident-resolved": Email("service", "that outage is resolved"),
    "billing-receipt": Email("billing", "an invoice is paid (to the billing email or the owners)"),
    "billing-payment-failed": Email(
        "billing", "a payment fails: the grace period before Free's limits (to the owners)"
    ),
    "policy-announcement": Email(
        "policy", "a new privacy policy version is published, 30+ days before it applies"
    ),
}


def render(template: str, context: dict[str, Any]) -> tuple[str, str, str]:
    ctx = {"site_url": settings.SITE_URL, **context}
    subject = render_to_string(f"emails/{template}-subject.txt", ctx).strip().replace("\n", " ")
    text = render_to_string(f"emails/{template}-body.txt", ctx)
    html = render_to_string(f"emails/{template}-body.html", ctx)
    return subject, text, html
