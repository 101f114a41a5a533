from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path

from clinik import views
from clinik.accounts import views as account_views
from clinik.billing import urls as billing_urls
from clinik.fhir import views as fhir_views
from clinik.notify import views as notify_views
from clinik.privacy import urls as privacy_urls
from clinik.privacy import views as privacy_views

org_patterns: list[URLPattern | URLResolver] = [
    path("", account_views.org_overview, name="org_overview"),
    path("settings/", account_views.org_settings, name="org_settings"),
    path("team/", account_views.team, name="team"),
    path("team/invite/", account_views.team_invite, name="team_invite"),
    path(
        "team/invitations/<int:invitation_id>/revoke/",
        account_views.team_invite_revoke,
        name="team_invite_revoke",
    ),
    path("team/members/<int:member_id>/role/", account_views.team_role, name="team_role"),
    path("team/members/<int:member_id>/remove/", account_views.team_remove, name="team_remove"),
    path("keys/", include("clinik.keys.urls")),
    path("privacy/", include(privacy_urls.org_patterns)),
    path("usage/", include("clinik.usage.urls")),
    path("audit/", include("clinik.audit.urls")),
    path("billing/", include(billing_urls.org_patterns)),
    path("webhooks/", include("clinik.subscriptions.urls")),
]

urlpatterns = [
    # The API first: Django tries patterns in order, and no other pattern matches a
    # path under fhir/, so the place changes nothing but the time to resolve.
    path("fhir/R4", fhir_views.base),
    path("fhir/R4/", include("clinik.fhir.urls")),
    path("", views.landing, name="landing"),
    path("healthz", views.healthz, name="healthz"),
    path("privacy", privacy_views.policy, name="privacy"),
    path("security", views.security, name="security"),
    path("status", notify_views.status, name="status"),
    path("emails", notify_views.emails, name="emails"),
    path(
        "privacy/acknowledge/<int:version>/",
        notify_views.policy_acknowledge,
        name="policy_acknowledge",
    ),
    path("accounts/data/", include(privacy_urls.account_patterns)),
    path("accounts/", include("clinik.accounts.urls")),
    path("dashboard/", account_views.dashboard, name="dashboard"),
    path("orgs/new/", account_views.org_create, name="org_create"),
    path("o/<uuid:org_id>/", include(org_patterns)),
    path("billing/", include(billing_urls.urlpatterns)),
    path("staff/", admin.site.urls),
]
