from django.contrib.auth import views as auth_views
from django.urls import path

from clinik.accounts import supabase_views, views

app_name = "accounts"

urlpatterns = [
    path("signup/", views.signup, name="signup"),
    path("signin/", views.signin, name="signin"),
    path("signout/", views.signout, name="signout"),
    path("settings/", views.account, name="account"),
    path("password-reset/", views.password_reset, name="password_reset"),
    path(
        "password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(template_name="accounts/password_reset_done.html"),
        name="password_reset_done",
    ),
    path(
        "password-reset/<uidb64>/<token>/",
        views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "password-reset/complete/",
        auth_views.PasswordResetCompleteView.as_view(
            template_name="accounts/password_reset_complete.html"
        ),
        name="password_reset_complete",
    ),
    path("invitations/<str:token>/", views.invitation, name="invitation"),
    # Supabase Auth (when SUPABASE_URL is set; clinik.accounts.supabase_views)
    path("auth/callback/", supabase_views.callback, name="supabase_callback"),
    path("auth/magic-link/", supabase_views.magic_link, name="supabase_magic_link"),
    path("auth/oauth/<str:provider>/", supabase_views.oauth, name="supabase_oauth"),
    path("auth/password/", supabase_views.set_password, name="supabase_password"),
]
