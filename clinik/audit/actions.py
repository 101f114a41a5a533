"""The one registry of audit action names. `audit.record` refuses any other name,
and tests iterate this table."""

ACTIONS: dict[str, str] = {
    "account.signup": "A user signed up",
    "account.signin": "A user signed in",
    "account.signin_failed": "A sign-in attempt failed",
    "account.signout": "A user signed out",
    "account.update": "A user changed their name or email",
    "account.password_change": "A user changed their password",
    "account.password_reset": "A user reset their password by email",
    "org.create": "An organization was created",
    "org.update": "An organization's settings changed",
    "member.invite": "A teammate was invited",
    "member.invite_revoke": "An invitation was revoked",
    "member.join": "An invitation was accepted",
    "member.role_change": "A member's role changed",
    "member.remove": "A member was removed or left",
    "key.create": "An API key was created",
    "key.revoke": "An API key was revoked",
}
