"""`org_patterns` are mounted under `o/<uuid:org_id>/billing/`; `urlpatterns` (the
webhook) under `billing/`."""

from django.contrib.auth.decorators import login_required
from django.urls import path

from clinik.billing import views

org_patterns = [
    path("", login_required(views.billing), name="billing"),
    path("checkout/", login_required(views.billing_checkout), name="billing_checkout"),
    path("portal/", login_required(views.billing_portal), name="billing_portal"),
]

urlpatterns = [
    path("stripe/webhook", views.stripe_webhook, name="stripe_webhook"),
]
