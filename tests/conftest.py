pytest_plugins = ["tests.fixtures_standin", "tests.fixtures_worker"]

import socket

import pytest
from django.contrib.auth.models import Group


def pytest_collection_modifyitems(config, items):
    """Browser tests last: Playwright's sync API keeps an event loop running in the main thread
    while a browser is open, and tests that call asyncio.run() cannot run inside it."""
    items.sort(key=lambda item: "/tests/e2e/" in str(item.path))


@pytest.fixture
def refused_url():
    """A model endpoint that refuses connections for the whole test. The port stays bound but never
    listens, so no other process (the other database's test pass runs alongside) can take it over."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def _user(django_user_model, username: str, *roles: str):
    # get_or_create: a transactional test before this one flushes the groups the migration made.
    user = django_user_model.objects.create_user(username=username, password="pw-" + username)
    for role in roles:
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


@pytest.fixture
def reviewer(django_user_model):
    return _user(django_user_model, "rita", "reviewer")


@pytest.fixture
def reviewer2(django_user_model):
    return _user(django_user_model, "rory", "reviewer")


@pytest.fixture
def approver(django_user_model):
    return _user(django_user_model, "april", "approver")


@pytest.fixture
def engineer(django_user_model):
    return _user(django_user_model, "eddie", "engineer")


@pytest.fixture
def outsider(django_user_model):
    """Logged in, but holds no role."""
    return _user(django_user_model, "otto")


@pytest.fixture
def client_for(client):
    """`client_for(user)` logs the test client in as that user."""

    def login(user):
        client.force_login(user)
        return client

    return login
