from django.urls import path

from clinik.usage import views

urlpatterns = [
    path("", views.usage, name="usage"),
    path("requests/", views.requests_log, name="usage_requests"),
    path("requests.csv", views.requests_csv, name="usage_requests_csv"),
    path("errors/", views.errors_log, name="usage_errors"),
]
