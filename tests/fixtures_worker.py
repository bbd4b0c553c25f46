"""Fixtures for tests that need a real Celery worker against Redis."""
