from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "clinik.audit"
    label = "audit"

    def ready(self) -> None:
        from django.contrib.admin.models import LogEntry
        from django.contrib.auth.signals import user_logged_in, user_login_failed
        from django.db.models.signals import post_save

        from clinik.audit import staff

        post_save.connect(staff.on_log_entry, sender=LogEntry, dispatch_uid="audit_staff_log")
        user_logged_in.connect(staff.on_signed_in, dispatch_uid="audit_staff_signin")
        user_login_failed.connect(staff.on_sign_in_failed, dispatch_uid="audit_staff_failed")
