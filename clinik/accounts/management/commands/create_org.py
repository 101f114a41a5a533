import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import validate_email
from django.db import transaction

from clinik.accounts.actions import do_create_org
from clinik.accounts.models import User, normalize_email
from clinik.billing.actions import do_assign_plan
from clinik.billing.models import Plan
from clinik.keys.actions import do_create_key
from clinik.keys.models import ApiKey


class Command(BaseCommand):
    help = (
        "Create a user (or reuse one with that email), an organization they own and one "
        "live API key; print {org_id, user_email, api_key} as one JSON line."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="organization name")
        parser.add_argument("--email", required=True, help="the owner's email")
        parser.add_argument("--password", default=None, help="the owner's password (optional)")
        parser.add_argument(
            "--plan", default=None, help="the plan's slug (default: the default plan)"
        )

    def handle(
        self,
        *args: Any,
        name: str,
        email: str,
        password: str | None,
        plan: str | None = None,
        **opts: Any,
    ) -> None:
        email = normalize_email(email)
        try:
            validate_email(email)
        except Exception:
            raise CommandError(f"not an email address: {email!r}") from None
        if not name.strip():
            raise CommandError("--name must not be empty")
        chosen = Plan.objects.filter(slug=plan).first() if plan else None
        if plan and chosen is None:
            slugs = ", ".join(Plan.objects.values_list("slug", flat=True))
            raise CommandError(f"no plan {plan!r} (plans: {slugs})")
        with transaction.atomic():
            user = User.objects.filter(email=email).first()
            if user is None:
                user = User.objects.create_user(email, password, name=email.split("@")[0])
            elif password:
                user.set_password(password)
                user.save(update_fields=["password"])
            org = do_create_org(user=user, name=name.strip(), request=None)
            if chosen is not None:
                do_assign_plan(org=org, plan=chosen, actor=None)
            result = {"org_id": str(org.pk), "user_email": user.email}
            result.update(self.issue_first_key(org, user))
        self.stdout.write(json.dumps(result))

    def issue_first_key(self, org: Any, user: User) -> dict[str, str]:
        _key, plaintext = do_create_key(
            org=org,
            actor=user,
            name="First key",
            scopes=ApiKey.Scopes.READ_WRITE,
            expires_at=None,
            request=None,
        )
        return {"api_key": plaintext}
