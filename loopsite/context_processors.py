from django.conf import settings

from .roles import roles_of


def loopsite(request):
    user = getattr(request, "user", None)
    return {
        "standin_in_use": settings.STANDIN_IN_USE,
        "agent_shell_unconfined": settings.LOOPSITE_UNCONFINED_SANDBOX,
        "user_roles": roles_of(user) if user is not None and user.is_authenticated else frozenset(),
    }
