from django.urls import path

from clinik.audit import views

urlpatterns = [
    path("", views.audit_log, name="audit_log"),
    path("<int:event_id>/", views.audit_event, name="audit_event"),
    path("export/", views.audit_export, name="audit_export"),
    path("exports/", views.audit_export_start, name="audit_export_start"),
    path("exports/<int:export_id>/", views.audit_export_status, name="audit_export_status"),
    path(
        "exports/<int:export_id>/download/",
        views.audit_export_download,
        name="audit_export_download",
    ),
]
