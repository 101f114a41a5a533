"""Security alerts to a user (new sign-in method, password or email change).

Sent through clinik.notify (recorded, retried, type `security`)."""

from clinik.notify.emails import send

EVENTS = {
    "method_linked": "A new way to sign in was added to your account",
    "password_changed": "Your password was changed",
    "email_changed": "Your account's email address was changed",
    "email_change_requested": "A change of your account's email address was requested",
}


def send_security_alert(to: list[str], event: str, detail: str = "") -> None:
    """Email `to` after the transaction commits. `detail` is plain words (a provider
    name, an address the user owns), never a token or a link that signs in."""
    send("security", "security-alert", to, {"what": EVENTS[event], "detail": detail})
