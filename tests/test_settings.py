"""Settings read the environment and fail loudly on bad values."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def load_settings(**env):
    full = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; "
         "print(settings.DATABASES['default']['ENGINE'], settings.CELERY_TASK_ALWAYS_EAGER, settings.REDIS_URL)"],
        cwd=ROOT, env={**full, "DJANGO_SETTINGS_MODULE": "config.settings"}, capture_output=True, text=True,
    )


@pytest.mark.parametrize(
    "env, message",
    [
        ({"DEBUG": "ture"}, "DEBUG='ture' is not a boolean"),
        ({"GATEWAY_MAX_BODY_BYTES": "4MB"}, "GATEWAY_MAX_BODY_BYTES='4MB' is not an integer"),
        ({"DATABASE_URL": "mysql://x/y"}, "scheme must be one of"),
        ({"APP_ENV": "prod"}, "APP_ENV='prod'"),
        ({"APP_ENV": "production", "DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY must be set in production"),
        ({"DJANGO_SECRET_KEY": "short"}, "at least 32 characters"),
        ({"LOCAL_NODE_EMBEDDINGS": "bert"}, "LOCAL_NODE_EMBEDDINGS='bert' must be e5, minilm or off"),
    ],
)
def test_bad_values_stop_start_up(env, message):
    result = load_settings(**env)
    assert result.returncode != 0 and message in result.stderr


def test_nothing_set_is_the_embedded_default(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings as s; "
         "print(s.DATABASES['default']['ENGINE'], s.CELERY_TASK_ALWAYS_EAGER, s.REDIS_URL, "
         "s.CHANNEL_LAYERS['default']['BACKEND'], s.LOCAL_NODE_ENABLED)"],
        cwd=ROOT, env={**env, "STATE_DIR": str(tmp_path), "LOCAL_NODE_ENABLED": "1",
                       "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True, text=True, check=True,
    )
    assert result.stdout.split() == [
        "django.db.backends.sqlite3", "True", "None", "channels.layers.InMemoryChannelLayer", "True"
    ]
    assert (tmp_path / "django_secret_key.secret").stat().st_mode & 0o777 == 0o600
