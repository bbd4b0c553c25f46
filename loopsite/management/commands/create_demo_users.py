import os

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

# username -> (roles, is_superuser)
DEMO_USERS = {
    "admin": (("engineer", "reviewer", "approver"), True),
    "engineer": (("engineer",), False),
    "reviewer": (("reviewer",), False),
    "reviewer2": (("reviewer",), False),
    "approver": (("approver",), False),
}


class Command(BaseCommand):
    help = "Create the demo users (idempotent). Password from DEMO_PASSWORD, default 'loopsite-demo'."

    def handle(self, *args, **options):
        password = os.environ.get("DEMO_PASSWORD", "loopsite-demo")
        User = get_user_model()
        for username, (roles, is_superuser) in DEMO_USERS.items():
            user, created = User.objects.get_or_create(username=username)
            if created:
                user.set_password(password)
            user.is_staff = user.is_superuser = is_superuser
            user.save()
            user.groups.add(*Group.objects.filter(name__in=roles))
            if created:
                self.stdout.write(f"Created demo user {username} ({', '.join(roles)})")
