"""Settings read from the environment: secrets from files, and what is refused with a message naming it."""

from __future__ import annotations

import pytest

from ducc.service.broker import display_url
from ducc.settings import Settings


def test_the_redis_password_comes_from_a_file_and_never_shows_in_the_settings_repr(tmp_path):
    secret = tmp_path / "redis-password"
    secret.write_text("r3dis-Pw\n")
    settings = Settings.from_env({"DUCC_REDIS_URL": "redis://redis.example.org:6379/0",
                                  "DUCC_REDIS_PASSWORD_FILE": str(secret)})
    assert settings.redis.password == "r3dis-Pw" and settings.redis.url == "redis://redis.example.org:6379/0"
    assert "r3dis-Pw" not in repr(settings)
    assert Settings.from_env({"DUCC_REDIS_PASSWORD": "direct"}).redis.password == "direct"
    assert Settings.from_env({}).redis.password is None


def test_a_password_both_in_the_url_and_in_the_setting_is_refused():
    with pytest.raises(ValueError, match="given twice"):
        Settings.from_env({"DUCC_REDIS_URL": "redis://:inurl@r:6379/0", "DUCC_REDIS_PASSWORD": "other"})


@pytest.mark.parametrize("name", ["DUCC_REDIS_PASSWORD_FILE", "DUCC_REGISTRY_PASSWORD_FILE", "DUCC_WEBHOOK_TOKEN_FILE"])
def test_a_secret_file_that_cannot_be_read_is_a_value_error_naming_the_file(tmp_path, name):
    missing = tmp_path / "not-there"
    with pytest.raises(ValueError, match=f"{name} {missing} cannot be read: No such file or directory"):
        Settings.from_env({name: str(missing)})


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cret@r.example.org:6379/0", "redis://:***@r.example.org:6379/0"),
    ("redis://user:s3cret@r.example.org/0", "redis://user:***@r.example.org/0"),
    ("redis://r.example.org:6379/0", "redis://r.example.org:6379/0"),
    ("unix:///var/lib/ducc/redis/redis.sock", "unix:///var/lib/ducc/redis/redis.sock"),
], ids=["password", "user-and-password", "none", "socket"])
def test_a_redis_url_is_shown_without_its_password(url, shown):
    assert display_url(url) == shown
