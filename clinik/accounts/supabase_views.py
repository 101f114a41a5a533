"""Dashboard sign-in through Supabase Auth (clinik.accounts.supabase). The views in
clinik.accounts.views hand over to these when SUPABASE_URL is set; every way in ends
in the same ordinary Django session as a password sign-in."""

import logging

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import SetPasswordForm
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from clinik import audit
from clinik.accounts import supabase, throttle
from clinik.accounts.actions import IdentityNotLinked, do_supabase_signin
from clinik.accounts.alerts import send_security_alert
from clinik.accounts.forms import EmailForm, SignInForm, SupabaseSignUpForm
from clinik.lib.http import AuthedHttpRequest, client_ip

log = logging.getLogger(__name__)

_BACKEND = "django.contrib.auth.backends.ModelBackend"
_RECOVERY = "/PASSWORD_RECOVERY"


def _callback_url(request: HttpRequest) -> str:
    return f"{settings.SITE_URL}{reverse('accounts:supabase_callback')}"


def _finish(request: HttpRequest, response: supabase.AuthResponse, next_url: str) -> HttpResponse:
    """Verify the access token ourselves, find or link our user, start the session."""
    session = response.session
    if session is None:
        messages.error(request, "Sign-in did not complete. Try again.")
        return redirect("accounts:signin")
    try:
        claims = supabase.verify(session.access_token)
        user = do_supabase_signin(claims=claims, request=request)
    except supabase.InvalidToken as exc:
        log.warning("Supabase access token refused: %s", exc)
        audit.record(
            "account.signin_failed", org=None, actor=None, outcome="failure", request=request
        )
        messages.error(request, "Sign-in did not complete. Try again.")
        return redirect("accounts:signin")
    except IdentityNotLinked:
        supabase.revoke_tokens(session.access_token, session.refresh_token)
        messages.error(
            request,
            "To connect this sign-in to your account, sign in once with a magic link "
            "sent to its email address.",
        )
        return redirect("accounts:signin")
    if not user.is_active:
        supabase.revoke_tokens(session.access_token, session.refresh_token)
        messages.error(request, "Sign-in did not complete. Try again.")
        return redirect("accounts:signin")
    login(request, user, backend=_BACKEND)  # rotates the session id
    supabase.keep_tokens(request.session, session.access_token, session.refresh_token)
    throttle.clear(user.email)
    audit.record("account.signin", org=None, actor=user, request=request)
    return redirect(next_url)


def signin(request: HttpRequest, form: SignInForm, next_url: str) -> HttpResponse | None:
    """Email + password at Supabase; None when the form is to be shown again."""
    email, ip = form.cleaned_data["email"], client_ip(request)
    try:
        response = supabase.client(request.session).sign_in_with_password(
            {"email": email, "password": form.cleaned_data["password"]}
        )
    except supabase.ERRORS:
        response = None
    if response is not None and response.session is not None:
        return _finish(request, response, next_url)
    throttle.note_failure(email, ip)
    audit.record("account.signin_failed", org=None, actor=None, outcome="failure", request=request)
    return None


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    form = SupabaseSignUpForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            response = supabase.client(request.session).sign_up(
                {
                    "email": data["email"],
                    "password": data["password"],
                    "options": {
                        "email_redirect_to": _callback_url(request),
                        "data": {"name": data["name"], "org_name": data["org_name"]},
                    },
                }
            )
        except supabase.ERRORS:
            log.warning("Supabase Auth sign-up was refused")
            response = None
        if response is not None and response.session is not None:
            return _finish(request, response, reverse("dashboard"))
        # Same page whether the address is new, known, or refused.
        return render(request, "accounts/supabase_check_email.html", {"purpose": "signup"})
    return render(request, "accounts/signup.html", {"form": form, "next": ""})


@require_POST
def magic_link(request: HttpRequest) -> HttpResponse:
    form = EmailForm(request.POST)
    if not form.is_valid():
        return render(
            request, "accounts/signin.html", {"form": SignInForm(), "magic": form}, status=400
        )
    email, ip = form.cleaned_data["email"], client_ip(request)
    if throttle.is_locked(email, ip):
        ctx = {"form": SignInForm(), "magic": form, "locked": True}
        return render(request, "accounts/signin.html", ctx, status=429)
    throttle.note_failure(email, ip)  # each link sent counts; a sign-in clears it
    try:
        supabase.client(request.session).sign_in_with_otp(
            {"email": email, "options": {"email_redirect_to": _callback_url(request)}}
        )
    except supabase.ERRORS:
        log.warning("Supabase Auth did not send a magic link")
    return render(request, "accounts/supabase_check_email.html", {"purpose": "magic"})


@require_safe
def oauth(request: HttpRequest, provider: str) -> HttpResponse:
    if not supabase.enabled() or provider not in settings.SUPABASE_OAUTH_PROVIDERS:
        raise Http404
    response = supabase.client(request.session).sign_in_with_oauth(
        {"provider": provider, "options": {"redirect_to": _callback_url(request)}}  # type: ignore[typeddict-item]
    )
    return redirect(response.url)


@require_safe
def callback(request: HttpRequest) -> HttpResponse:
    """Where Supabase sends the browser back: `code` (PKCE: OAuth, magic link, sign-up
    confirmation, password recovery, email change) or `token_hash` + `type`."""
    code = request.GET.get("code", "")
    token_hash, kind = request.GET.get("token_hash", ""), request.GET.get("type", "")
    if not supabase.enabled() or not (code or token_hash):
        return redirect("accounts:signin")
    auth = supabase.client(request.session)
    stored = supabase.SessionStorage(request.session).get_item(f"{auth._storage_key}-code-verifier")
    recovery = (stored or "").endswith(_RECOVERY) if code else kind == "recovery"
    try:
        if code:
            response = auth.exchange_code_for_session({"auth_code": code})
        elif kind in {"signup", "magiclink", "recovery", "email_change", "email", "invite"}:
            response = auth.verify_otp({"token_hash": token_hash, "type": kind})  # type: ignore[typeddict-item]
        else:
            return redirect("accounts:signin")
    except supabase.ERRORS:
        messages.error(request, "That link is invalid or has expired. Ask for a new one.")
        return redirect("accounts:signin")
    next_url = reverse("accounts:supabase_password") if recovery else reverse("dashboard")
    return _finish(request, response, next_url)


@require_http_methods(["GET", "POST"])
def password_reset(request: HttpRequest) -> HttpResponse:
    form = EmailForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        email, ip = form.cleaned_data["email"], client_ip(request)
        if not throttle.is_locked(email, ip):
            throttle.note_failure(email, ip)
            try:
                supabase.client(request.session).reset_password_for_email(
                    email, {"redirect_to": _callback_url(request)}
                )
            except supabase.ERRORS:
                log.warning("Supabase Auth did not send a reset link")
        # Same answer whether the address has an account, and when throttled.
        return redirect("accounts:password_reset_done")
    return render(request, "accounts/password_reset.html", {"form": form})


@login_required
@require_http_methods(["GET", "POST"])
def set_password(request: AuthedHttpRequest) -> HttpResponse:
    """Choose a new password at Supabase (after a recovery link, or from settings)."""
    form = SetPasswordForm(request.user, request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        if change_password(request, form.cleaned_data["new_password1"]):
            messages.success(request, "Your password is changed.")
            return redirect("dashboard")
        form.add_error(None, "Supabase Auth did not accept the new password. Try another.")
    ctx = {"form": form, "validlink": True}
    return render(request, "accounts/password_reset_confirm.html", ctx)


def change_password(request: AuthedHttpRequest, password: str) -> bool:
    try:
        supabase.user_client(request.session).update_user({"password": password})
    except supabase.ERRORS:
        return False
    with transaction.atomic():
        audit.record("account.password_change", org=None, actor=request.user, request=request)
        send_security_alert([request.user.email], "password_changed")
    return True


def request_email_change(request: AuthedHttpRequest, email: str) -> bool:
    """Ask Supabase to change the email: it sends a confirmation link to the new
    address; our copy changes when a verified token shows it (do_supabase_signin)."""
    try:
        supabase.user_client(request.session).update_user(
            {"email": email}, {"email_redirect_to": _callback_url(request)}
        )
    except supabase.ERRORS:
        return False
    with transaction.atomic():
        user = request.user
        audit.record("account.email_change_request", org=None, actor=user, request=request)
        detail = f"Requested new address: {email}."
        send_security_alert([user.email], "email_change_requested", detail)
    return True
