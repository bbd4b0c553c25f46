"""Deployment settings: no start on the development SECRET_KEY with DEBUG off; one switch for HTTPS."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHOW = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({k: getattr(s, k, None) for k in ('SECRET_KEY', 'DEBUG', 'SESSION_COOKIE_SECURE', "
    "'CSRF_COOKIE_SECURE', 'SECURE_HSTS_SECONDS', 'SECURE_PROXY_SSL_HEADER', 'SECURE_SSL_REDIRECT')}))"
)


def settings_in_a_fresh_process(tmp_path, **env) -> subprocess.CompletedProcess:
    """Load the settings as `make run` would: outside pytest, with only `env` set."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("PYTEST_VERSION", "SECRET_KEY", "SECRET_KEY_FILE", "DJANGO_DEBUG", "LOOPSITE_HTTPS")}
    base.update({"DJANGO_SETTINGS_MODULE": "loopsite.settings", "SECRET_KEY_FILE": str(tmp_path / "no-such-file")})
    base.update(env)
    return subprocess.run([sys.executable, "-c", SHOW], cwd=ROOT, env=base, capture_output=True, text=True, timeout=60)


def test_it_refuses_the_development_key_with_debug_off(tmp_path):
    done = settings_in_a_fresh_process(tmp_path)
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr
    assert "built-in development SECRET_KEY" in done.stderr and "var/secret_key" in done.stderr


def test_it_reads_the_key_that_make_run_keeps_under_var(tmp_path):
    key_file = tmp_path / "secret_key"
    key_file.write_text("a-generated-key-of-fifty-characters-or-so-0123456789\n")
    done = settings_in_a_fresh_process(tmp_path, SECRET_KEY_FILE=str(key_file))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["SECRET_KEY"] == "a-generated-key-of-fifty-characters-or-so-0123456789"


def test_the_environment_wins_over_the_file_and_debug_allows_the_dev_key(tmp_path):
    done = settings_in_a_fresh_process(tmp_path, SECRET_KEY="from-the-environment")
    assert json.loads(done.stdout)["SECRET_KEY"] == "from-the-environment"
    done = settings_in_a_fresh_process(tmp_path, DJANGO_DEBUG="1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["DEBUG"] is True


def test_one_setting_switches_on_https(tmp_path):
    off = json.loads(settings_in_a_fresh_process(tmp_path, SECRET_KEY="k").stdout)
    assert (off["SESSION_COOKIE_SECURE"], off["CSRF_COOKIE_SECURE"], off["SECURE_HSTS_SECONDS"]) == (False, False, 0)
    assert off["SECURE_PROXY_SSL_HEADER"] is None and off["SECURE_SSL_REDIRECT"] is False
    on = json.loads(settings_in_a_fresh_process(tmp_path, SECRET_KEY="k", LOOPSITE_HTTPS="1").stdout)
    assert (on["SESSION_COOKIE_SECURE"], on["CSRF_COOKIE_SECURE"]) == (True, True)
    assert on["SECURE_HSTS_SECONDS"] == 31536000 and on["SECURE_SSL_REDIRECT"] is True
    assert on["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]


def test_make_run_keeps_a_generated_key_under_var():
    makefile = (ROOT / "Makefile").read_text()
    run_target = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    key_target = makefile.split("\nsecret-key:", 1)[1].split("\n\n", 1)[0]
    assert "var/secret_key" in key_target and "secrets.token_urlsafe" in key_target
    assert "secret-key" in run_target.splitlines()[0]  # a prerequisite: made before anything runs
