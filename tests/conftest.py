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


@pytest.fixture(autouse=True, scope="session")
def _no_persistent_connections():
    """A connection per request, as before persistent connections were the PostgreSQL default: the live
    server's threads then never leave one open at the test database's drop. (Workers close theirs after
    every task anyway: Celery's Django fix-up.)"""
    from django.db import connections

    for alias in connections:
        connections[alias].settings_dict["CONN_MAX_AGE"] = 0
    yield


@pytest.fixture(autouse=True, scope="session")
def _fast_password_hashing():
    """Test users' passwords are hashed with MD5: the default PBKDF2 (a million iterations) took 0.23 s
    a user, most of the set-up time of a test with three users, on every test."""
    from django.test.utils import override_settings

    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


@pytest.fixture(autouse=True, scope="session")
def _tasks_raise_in_tests():
    """`task.apply()` re-raises what the task raised (as `.apply(..., throw=True)` does), so a task
    test cannot pass while the task fails. Only .apply() is affected: nothing runs eagerly."""
    from loopsite.celery import app

    app.conf.task_eager_propagates = True
    yield
