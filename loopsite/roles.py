"""Roles are Django groups created by a migration; admins are superusers."""

from functools import wraps

from django.core.exceptions import PermissionDenied

REVIEWER = "reviewer"
APPROVER = "approver"
ENGINEER = "engineer"
ROLES = (REVIEWER, APPROVER, ENGINEER)


def roles_of(user) -> frozenset[str]:
    if not user.is_authenticated:
        return frozenset()
    if user.is_superuser:
        return frozenset(ROLES)
    cached = getattr(user, "_loopsite_roles", None)
    if cached is None:
        cached = frozenset(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
        user._loopsite_roles = cached
    return cached


def has_role(user, *roles: str) -> bool:
    """True when the user holds any of `roles`."""
    return bool(roles_of(user) & set(roles))


def require_role(user, *roles: str) -> None:
    if not has_role(user, *roles):
        raise PermissionDenied(f"This needs the {' or '.join(roles)} role.")


def role_required(*roles: str):
    """View decorator: 403 unless the user holds one of `roles`."""

    def decorator(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            require_role(request.user, *roles)
            return view(request, *args, **kwargs)

        return wrapped

    return decorator
