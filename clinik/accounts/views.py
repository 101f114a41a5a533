from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate, login, logout, update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm, SetPasswordForm
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from clinik import audit
from clinik.accounts import supabase, supabase_views, throttle
from clinik.accounts.access import (
    dashboard_context,
    get_managing_membership,
    get_membership,
)
from clinik.accounts.actions import (
    LastOwnerError,
    do_accept_invitation,
    do_change_role,
    do_create_org,
    do_invite,
    do_note_lockout,
    do_remove_member,
    do_revoke_invitation,
    do_signup,
    do_update_org,
)
from clinik.accounts.forms import (
    InviteForm,
    OrganizationForm,
    PasswordResetForm,
    ProfileForm,
    RoleForm,
    SignInForm,
    SignUpForm,
)
from clinik.accounts.models import Invitation, Membership, hash_token
from clinik.gateway.limits import PlanLimitReached
from clinik.lib.http import AuthedHttpRequest, client_ip
from clinik.notify import security
from clinik.privacy import analytics


def _safe_next(request: HttpRequest, fallback: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return fallback


# --- sign up, sign in, sign out ------------------------------------------------------


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("dashboard")
    if supabase.enabled():
        return supabase_views.signup(request)
    form = SignUpForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        user, org = do_signup(
            email=data["email"],
            name=data["name"],
            password=data["password"],
            org_name=data["org_name"],
            request=request,
        )
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        request.session["org_id"] = str(org.pk)
        with transaction.atomic():
            security.note_signin(request, user, alert=False)
        analytics.capture(user, "signed_up")
        analytics.capture(user, "organization_created")
        return redirect(_safe_next(request, reverse("org_overview", args=[org.pk])))
    return render(request, "accounts/signup.html", {"form": form, "next": _safe_next(request, "")})


@require_http_methods(["GET", "POST"])
def signin(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("dashboard")
    form = SignInForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST" and form.is_valid():
        email, ip = form.cleaned_data["email"], client_ip(request)
        if throttle.is_locked(email, ip):
            minutes = max(1, settings.SIGNIN_LOCKOUT_SECONDS // 60)
            form.add_error(
                None,
                f"Too many failed attempts. Try again in {minutes} minutes or reset your password.",
            )
            status = 429
        elif supabase.enabled():
            done = supabase_views.signin(request, form, _safe_next(request, reverse("dashboard")))
            if done is not None:
                return done
            form.add_error(None, "Email or password is incorrect.")
            status = 400
        else:
            user = authenticate(request, username=email, password=form.cleaned_data["password"])
            if user is not None:
                login(request, user)
                throttle.clear(email)
                with transaction.atomic():
                    audit.record("account.signin", org=None, actor=user, request=request)
                    security.note_signin(request, user)
                analytics.capture(user, "signed_in")
                return redirect(_safe_next(request, reverse("dashboard")))
            locks = throttle.note_failure(email, ip)
            audit.record(
                "account.signin_failed",
                org=None,
                actor=None,
                outcome="failure",
                request=request,
            )
            if locks:
                do_note_lockout(email=email, request=request)
            form.add_error(None, "Email or password is incorrect.")
            status = 400
    ctx = {"form": form, "next": _safe_next(request, ""), **_supabase_context()}
    return render(request, "accounts/signin.html", ctx, status=status)


def _supabase_context() -> dict[str, Any]:
    if not supabase.enabled():
        return {}
    return {"supabase": True, "providers": settings.SUPABASE_OAUTH_PROVIDERS}


@require_POST
def signout(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        audit.record("account.signout", org=None, actor=request.user, request=request)
    supabase.revoke(request.session)  # the Supabase refresh token, before the flush
    logout(request)  # flushes the server-side session
    return redirect("landing")


def password_reset(request: HttpRequest) -> HttpResponseBase:
    if supabase.enabled():
        return supabase_views.password_reset(request)
    return PasswordResetView.as_view()(request)


class PasswordResetView(auth_views.PasswordResetView):
    template_name = "accounts/password_reset.html"
    form_class = PasswordResetForm
    email_template_name = "emails/password-reset-body.txt"
    html_email_template_name = "emails/password-reset-body.html"
    subject_template_name = "emails/password-reset-subject.txt"
    success_url = reverse_lazy("accounts:password_reset_done")
    extra_email_context = {"site_url": settings.SITE_URL}


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("accounts:password_reset_complete")

    def form_valid(self, form: SetPasswordForm) -> HttpResponse:
        response = super().form_valid(form)
        with transaction.atomic():
            audit.record("account.password_reset", org=None, actor=form.user, request=self.request)
            security.alert_password_changed(form.user)
        return response


# --- account settings (rectification) ---------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def account(request: AuthedHttpRequest) -> HttpResponse:
    user = request.user
    profile = ProfileForm(initial={"name": user.name, "email": user.email}, user=user)
    usable = user.has_usable_password() and not supabase.enabled()
    password_cls = PasswordChangeForm if usable else SetPasswordForm
    password_form = password_cls(user)
    if request.method == "POST" and request.POST.get("form") == "profile":
        profile = ProfileForm(request.POST, user=user)
        if profile.is_valid() and supabase.enabled():
            return _supabase_profile(request, profile)
        if profile.is_valid():
            old_email = user.email
            user.name = profile.cleaned_data["name"]
            user.email = profile.cleaned_data["email"]
            with transaction.atomic():
                user.save(update_fields=["name", "email"])
                audit.record("account.update", org=None, actor=user, target=user, request=request)
                if user.email != old_email:
                    security.alert_email_changed(user, old_email)
            messages.success(request, "Your profile is saved.")
            return redirect("accounts:account")
    elif request.method == "POST" and request.POST.get("form") == "password":
        password_form = password_cls(user, request.POST)
        if supabase.enabled():
            if password_form.is_valid():
                new = password_form.cleaned_data["new_password1"]
                if supabase_views.change_password(request, new):
                    messages.success(request, "Your password is changed.")
                    return redirect("accounts:account")
                password_form.add_error(None, "Supabase Auth did not accept the new password.")
        elif password_form.is_valid():
            with transaction.atomic():
                password_form.save()
                audit.record("account.password_change", org=None, actor=user, request=request)
                security.alert_password_changed(user)
            update_session_auth_hash(request, user)
            messages.success(request, "Your password is changed.")
            return redirect("accounts:account")
    org_id = request.session.get("org_id")
    membership = Membership.objects.filter(user=user, org_id=org_id).select_related("org").first()
    membership = membership or Membership.objects.filter(user=user).select_related("org").first()
    ctx: dict[str, Any] = {"profile": profile, "password_form": password_form}
    if membership:
        ctx.update(dashboard_context(request, membership, "account"))
    return render(request, "accounts/account.html", ctx)


def _supabase_profile(request: AuthedHttpRequest, profile: ProfileForm) -> HttpResponse:
    """Name changes here; an email change is confirmed by a link to the new address
    (Supabase Auth) and applied when a verified token shows it."""
    user = request.user
    with transaction.atomic():
        user.name = profile.cleaned_data["name"]
        user.save(update_fields=["name"])
        audit.record("account.update", org=None, actor=user, target=user, request=request)
    email = profile.cleaned_data["email"]
    if email == user.email:
        messages.success(request, "Your profile is saved.")
    elif supabase_views.request_email_change(request, email):
        messages.success(request, "Confirm the change with the link we sent to the new address.")
    else:
        messages.error(request, "Supabase Auth did not accept the new address.")
    return redirect("accounts:account")


# --- organizations -------------------------------------------------------------


@login_required
@require_safe
def dashboard(request: AuthedHttpRequest) -> HttpResponse:
    memberships = Membership.objects.filter(user=request.user)
    last = memberships.filter(org_id=request.session.get("org_id")).first()
    chosen = last or memberships.first()
    if chosen is None:
        return redirect("org_create")
    return redirect("org_overview", chosen.org_id)


@login_required
@require_http_methods(["GET", "POST"])
def org_create(request: AuthedHttpRequest) -> HttpResponse:
    form = OrganizationForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        org = do_create_org(user=request.user, name=form.cleaned_data["name"], request=request)
        analytics.capture(request.user, "organization_created")
        return redirect("org_overview", org.pk)
    return render(request, "accounts/org_create.html", {"form": form})


@login_required
@require_safe
def org_overview(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    membership = get_membership(request, org_id)
    members = membership.org.memberships.select_related("user")
    ctx = dashboard_context(request, membership, "overview", members=members)
    return render(request, "dashboard/overview.html", ctx)


@login_required
@require_http_methods(["GET", "POST"])
def org_settings(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    membership = get_membership(request, org_id)
    org = membership.org
    form = OrganizationForm(initial={"name": org.name})
    if request.method == "POST":
        if not membership.can_manage:
            raise PermissionDenied
        form = OrganizationForm(request.POST)
        if form.is_valid():
            do_update_org(
                org=org, name=form.cleaned_data["name"], actor=request.user, request=request
            )
            messages.success(request, "Organization settings saved.")
            return redirect("org_settings", org.pk)
    ctx = dashboard_context(request, membership, "settings", form=form)
    return render(request, "dashboard/settings.html", ctx)


def _team_context(request: AuthedHttpRequest, membership: Membership, **extra: Any) -> Any:
    org = membership.org
    return dashboard_context(
        request,
        membership,
        "team",
        members=org.memberships.select_related("user"),
        invitations=org.invitations.pending().order_by("-created_at"),
        invite_form=extra.pop("invite_form", None) or InviteForm(membership=membership),
        role_choices=[c for c in Membership.Role.choices if c[0] in membership.assignable_roles()],
        **extra,
    )


@login_required
@require_safe
def team(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    membership = get_membership(request, org_id)
    return render(request, "dashboard/team.html", _team_context(request, membership))


@login_required
@require_POST
def team_invite(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    membership = get_managing_membership(request, org_id)
    form = InviteForm(request.POST, membership=membership)
    if not form.is_valid():
        ctx = _team_context(request, membership, invite_form=form)
        return render(request, "dashboard/team.html", ctx, status=400)
    try:
        do_invite(
            org=membership.org,
            email=form.cleaned_data["email"],
            role=form.cleaned_data["role"],
            actor=request.user,
            request=request,
        )
    except PlanLimitReached as full:
        form.add_error(None, str(full))
        ctx = _team_context(request, membership, invite_form=form)
        return render(request, "dashboard/team.html", ctx, status=400)
    analytics.capture(request.user, "member_invited", role=form.cleaned_data["role"])
    messages.success(request, f"Invitation sent to {form.cleaned_data['email']}.")
    return redirect("team", org_id)


@login_required
@require_POST
def team_invite_revoke(
    request: AuthedHttpRequest, org_id: UUID, invitation_id: int
) -> HttpResponse:
    membership = get_managing_membership(request, org_id)
    invitation = get_object_or_404(membership.org.invitations.pending(), pk=invitation_id)
    do_revoke_invitation(invitation=invitation, actor=request.user, request=request)
    messages.success(request, "Invitation revoked.")
    return redirect("team", org_id)


def _target_member(membership: Membership, member_id: int) -> Membership:
    target = get_object_or_404(membership.org.memberships.select_related("user"), pk=member_id)
    if target.role == Membership.Role.OWNER and membership.role != Membership.Role.OWNER:
        raise PermissionDenied  # admins do not manage owners
    return target


@login_required
@require_POST
def team_role(request: AuthedHttpRequest, org_id: UUID, member_id: int) -> HttpResponse:
    membership = get_managing_membership(request, org_id)
    target = _target_member(membership, member_id)
    form = RoleForm(request.POST, membership=membership)
    if not form.is_valid():
        messages.error(request, "Choose a role you are allowed to give.")
        return redirect("team", org_id)
    try:
        do_change_role(
            membership=target, role=form.cleaned_data["role"], actor=request.user, request=request
        )
    except LastOwnerError:
        messages.error(request, "An organization needs at least one owner.")
        return redirect("team", org_id)
    messages.success(request, f"{target.user.name or target.user.email} is now {target.role}.")
    return redirect("team", org_id)


@login_required
@require_POST
def team_remove(request: AuthedHttpRequest, org_id: UUID, member_id: int) -> HttpResponse:
    membership = get_membership(request, org_id)
    leaving = membership.pk == member_id
    target = membership if leaving else None
    if target is None:
        if not membership.can_manage:
            raise PermissionDenied
        target = _target_member(membership, member_id)
    try:
        do_remove_member(membership=target, actor=request.user, request=request)
    except LastOwnerError:
        messages.error(
            request,
            "The last owner cannot be removed. Make someone else an owner first.",
        )
        return redirect("team", org_id)
    if leaving:
        request.session.pop("org_id", None)
        messages.success(request, f"You left {membership.org.name}.")
        return redirect("dashboard")
    messages.success(request, "Member removed.")
    return redirect("team", org_id)


@require_http_methods(["GET", "POST"])
def invitation(request: HttpRequest, token: str) -> HttpResponse:
    invitation = (
        Invitation.objects.select_related("org", "invited_by")
        .filter(token_hash=hash_token(token), accepted_at__isnull=True)
        .first()
    )
    if invitation is None:
        raise Http404
    ctx: dict[str, Any] = {"invitation": invitation, "token": token}
    if invitation.is_expired:
        return render(request, "accounts/invitation.html", ctx, status=410)
    user = request.user
    if not user.is_authenticated:
        return render(request, "accounts/invitation.html", ctx)
    ctx["email_matches"] = user.email == invitation.email
    if request.method == "POST":
        if not ctx["email_matches"]:
            return render(request, "accounts/invitation.html", ctx, status=403)
        membership = do_accept_invitation(invitation=invitation, user=user, request=request)
        analytics.capture(user, "member_joined", role=membership.role)
        request.session["org_id"] = str(invitation.org_id)
        messages.success(request, f"Welcome to {invitation.org.name}.")
        return redirect("org_overview", invitation.org_id)
    return render(request, "accounts/invitation.html", ctx)
