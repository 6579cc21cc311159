"""Every failure a user can cause, through the real ``ducc`` command: one line on stderr naming the
thing and the reason (``ducc: <what>: <why>``), the documented exit status, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mounts import tmpfs
from tests.support.processes import free_port

USAGE, FAILED, UNAVAILABLE = 2, 1, 69


def ducc(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DUCC_")}
    full.update({"DUCC_CACHE_DIR": "off", "DUCC_RETRY_ATTEMPTS": "2", **(env or {})})
    return subprocess.run([sys.executable, "-m", "ducc", *args], env=full, capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The failure's only line (after ``ducc:``), once its exit status and the absence of a traceback are checked."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ducc: "), done.stderr
    return lines[0][len("ducc: "):]


@pytest.fixture
def read_only(tmp_path):
    """A read-only mount (root can mount one here)."""
    with tmpfs(tmp_path / "ro", "ro,size=1m", "a read-only tmpfs") as mount:
        yield mount


def test_a_root_that_cannot_be_created_is_a_usage_error_before_any_work(tmp_path):
    line = one_line(ducc("-q", "convert", "127.0.0.1:1/a/b:1", "--root", "/proc/x"), USAGE)
    assert line == "repository root /proc/x cannot be created: No such file or directory"
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    line = one_line(ducc("-q", "sync", str(_wishlist(tmp_path)), "--root", str(a_file)), USAGE)
    assert line == f"repository root {a_file} is not a directory"


def test_a_root_on_a_read_only_mount_is_a_usage_error(read_only):
    line = one_line(ducc("-q", "convert", "127.0.0.1:1/a/b:1", "--root", str(read_only)), USAGE)
    assert line == f"repository root {read_only} is not writable: Read-only file system"
    below = read_only / "repo"
    line = one_line(ducc("-q", "convert", "127.0.0.1:1/a/b:1", "--root", str(below)), USAGE)
    assert line == f"repository root {below} cannot be created: Read-only file system"


def test_list_and_inspect_never_create_a_missing_root(tmp_path):
    missing = tmp_path / "nothing-here"
    for argv in (["list"], ["inspect", "127.0.0.1:1/a/b:1"]):
        line = one_line(ducc(*argv, "--root", str(missing)), FAILED)
        assert line == f"no repository at {missing} (nothing was ever published there)"
    assert not missing.exists()


def test_an_unreachable_registry_is_named_with_the_reason_and_the_attempts(tmp_path):
    nobody = f"127.0.0.1:{free_port()}"
    line = one_line(ducc("-q", "convert", f"{nobody}/team/app:1", "--root", str(tmp_path / "repo")), FAILED)
    assert line == f"manifest of {nobody}/team/app:1: registry {nobody} unreachable: connection refused (2 attempts)"
    # Without -q the retries are logged as they happen; the failure is still the one "ducc:" line, the last.
    done = ducc("convert", f"{nobody}/team/app:1", "--root", str(tmp_path / "repo"))
    assert done.returncode == FAILED and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("ducc: ")] == [done.stderr.splitlines()[-1]]


@pytest.mark.parametrize("argv", [["status", "127.0.0.1:1/a/b:1"], ["status", "18f0c0a0b00-0123456789"], ["jobs"],
                                  ["submit", "127.0.0.1:1/a/b:1"], ["cancel", "18f0c0a0b00-0123456789"],
                                  ["worker", "--ping", "--timeout", "1"]],
                         ids=["status-image", "status-id", "jobs", "submit", "cancel", "worker-ping"])
def test_commands_that_need_redis_say_it_is_unreachable(argv):
    url = f"redis://127.0.0.1:{free_port()}/0"
    line = one_line(ducc(*argv, env={"DUCC_REDIS_URL": url}), UNAVAILABLE)
    assert "Redis" in line and "unreachable" in line and "Connection refused" in line
    assert url.split("//")[1].split("/")[0] in line


@pytest.mark.parametrize("argv", [["status", "127.0.0.1:1/a/b:1"], ["jobs"], ["submit", "127.0.0.1:1/a/b:1"],
                                  ["cancel", "18f0c0a0b00-0123456789"], ["web", "--listen", "127.0.0.1:1"]],
                         ids=["status", "jobs", "submit", "cancel", "web"])
def test_without_redis_url_and_without_ducc_serve_the_commands_say_so(argv, tmp_path):
    state = tmp_path / "state"
    line = one_line(ducc(*argv, env={"DUCC_STATE_DIR": str(state)}), UNAVAILABLE)
    assert line == f"DUCC_REDIS_URL is not set and no ducc serve runs here (no {state / 'redis' / 'redis.sock'})"


def test_a_wrong_redis_password_is_named_without_showing_it(redis_server, tmp_path):
    from tests.support.service import start_redis

    server = start_redis(tmp_path / "redis-pw", password="the-Right-0ne")
    try:
        line = one_line(ducc("jobs", env={"DUCC_REDIS_URL": server.url, "DUCC_REDIS_PASSWORD": "the-Wrong-0ne"}),
                        UNAVAILABLE)
        assert line.startswith(f"Redis at {server.url} refused the password") and "0ne" not in line
    finally:
        server.stop()


def _wishlist(tmp_path: Path, text: str = "version: 1\ninput: ['127.0.0.1:1/a/b:1']\n") -> Path:
    path = tmp_path / "wishlist.yaml"
    path.write_text(text)
    return path


def test_a_missing_or_invalid_wishlist_is_a_usage_error(tmp_path):
    missing = tmp_path / "missing.yaml"
    assert one_line(ducc("sync", str(missing), "--root", str(tmp_path / "r")), USAGE) == \
        f"cannot read wishlist {missing}: No such file or directory"
    bad = _wishlist(tmp_path, "version: 1\ninput:\n  - ok/image:1\n  - 'Bad Image'\n")
    line = one_line(ducc("check-wishlist", str(bad), "--no-expand"), USAGE)
    assert line.startswith(f"wishlist {bad}: input #2: ")


@pytest.mark.parametrize(("env", "expected"), [
    ({"DUCC_RETRY_ATTEMPTS": "many"}, "DUCC_RETRY_ATTEMPTS must be an integer, not 'many'"),
    ({"DUCC_REGISTRY_PASSWORD_FILE": "/nonexistent/pw"},
     "DUCC_REGISTRY_PASSWORD_FILE /nonexistent/pw cannot be read: No such file or directory"),
    ({"DUCC_PUBLISHER": "ftp"}, "DUCC_PUBLISHER must be one of directory, cvmfs, not 'ftp'"),
], ids=["not-an-integer", "unreadable-secret-file", "unknown-publisher"])
def test_a_bad_setting_is_a_usage_error_naming_it(env, expected, tmp_path):
    assert one_line(ducc("list", "--root", str(tmp_path), env=env), USAGE) == expected


def test_a_bad_reference_is_a_usage_error():
    line = one_line(ducc("submit", "Not A Reference", env={"DUCC_REDIS_URL": "redis://127.0.0.1:1/0"}), USAGE)
    assert "Not A Reference" in line


def test_the_exit_statuses_are_documented_in_help_and_readme():
    done = ducc("--help")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for code in ("0", "1", "2", "69", "75", "130"):
        assert f"\n  {code} " in done.stdout, code
        assert f"| {code} |" in readme, code
