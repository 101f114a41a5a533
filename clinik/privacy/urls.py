"""Mounted by clinik/urls.py: `org_patterns` under o/<uuid:org_id>/privacy/,
`account_patterns` under accounts/data/."""

from django.urls import URLPattern, path

from clinik.privacy import views

org_patterns: list[URLPattern] = [
    path("", views.data_privacy, name="data_privacy"),
    path("exports/", views.privacy_exports, name="privacy_exports"),
    path("exports/start/", views.privacy_export_start, name="privacy_export_start"),
    path(
        "exports/<uuid:job_id>/cancel/", views.privacy_export_cancel, name="privacy_export_cancel"
    ),
    path("close/", views.privacy_close, name="privacy_close"),
    path("close/cancel/", views.privacy_close_cancel, name="privacy_close_cancel"),
]

account_patterns: list[URLPattern] = [
    path("", views.account_data_page, name="account_data"),
    path("download/", views.account_data_download, name="account_data_download"),
    path("analytics/", views.account_analytics, name="account_analytics"),
    path("analytics/reset/", views.account_analytics_reset, name="account_analytics_reset"),
    path("delete/", views.account_delete, name="account_delete"),
    path("delete/cancel/", views.account_delete_cancel, name="account_delete_cancel"),
]
