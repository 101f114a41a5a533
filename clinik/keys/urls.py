"""Mounted under `o/<uuid:org_id>/keys/`."""

from django.urls import path

from clinik.keys import views

urlpatterns = [
    path("", views.keys, name="keys"),
    path("new/", views.keys_create, name="keys_create"),
    path("<int:key_id>/revoke/", views.keys_revoke, name="keys_revoke"),
    path("origins/", views.keys_origin_add, name="keys_origin_add"),
    path("origins/<int:origin_id>/remove/", views.keys_origin_remove, name="keys_origin_remove"),
]
