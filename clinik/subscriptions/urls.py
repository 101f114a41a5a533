"""Mounted under `o/<uuid:org_id>/webhooks/`."""

from django.urls import path

from clinik.subscriptions import views

urlpatterns = [
    path("", views.webhooks, name="webhooks"),
    path("deliveries/", views.webhooks_deliveries, name="webhooks_deliveries"),
    path("<int:subscription_id>/ping/", views.webhooks_ping, name="webhooks_ping"),
    path("<int:subscription_id>/secret/", views.webhooks_secret, name="webhooks_secret"),
    path("<int:subscription_id>/rotate/", views.webhooks_rotate, name="webhooks_rotate"),
    path("deliveries/<int:delivery_id>/replay/", views.webhooks_replay, name="webhooks_replay"),
]
