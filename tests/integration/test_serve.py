"""``ducc serve`` as a new operator starts it: the wishlist synced at start (or not, when asked), its entries
and the next sync on the status page, what is refused before anything starts (a missing or invalid
wishlist, a state directory another ``ducc serve`` holds) and the warning about a missing webhook token."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from ducc import layout
from tests.support.images import File, ImageSpec, Layer, push_image
from tests.support.processes import free_port, wait_for_port
from tests.support.service import DuccProcess, service_env

TOKEN_WARNING = "no webhook token is configured"


def serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = service_env(tmp_path / "root", None, tmp_path / "state", DUCC_LISTEN=f"127.0.0.1:{free_port()}")
    for name in [n for n in env if n.startswith("DUCC_WEBHOOK_TOKEN") or n in ("DUCC_WISHLIST", "DUCC_ALLOW")]:
        del env[name]
    return {**env, **extra}


def ducc(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ducc", *args], env=env, capture_output=True, text=True, timeout=120)


def wait_until(condition, what: str, timeout: float = 120, proc: DuccProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}\n{proc.log()[-3000:] if proc else ''}")
        time.sleep(0.3)


def test_serve_syncs_the_wishlist_at_start_and_the_page_shows_its_entries_and_the_next_sync(client, unique_ref, tmp_path):
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[Layer([File("app", b"synced at start\n")])]))
    missing = unique_ref("never-pushed")
    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text(f"version: 1\ninput:\n  - '{ref}'\n  - '{missing}'\n")
    env = serve_env(tmp_path, DUCC_SYNC_SCHEDULE="0 3 * * *")
    serve = DuccProcess(["serve", "--wishlist", str(wishlist)], env, tmp_path / "serve.log").start()
    try:
        serve.wait_for_log("ready.", timeout=90)
        link = tmp_path / "root" / layout.tag_link(ref)
        wait_until(lambda: (link / "app").exists(), "the wishlist was not synced at start", proc=serve)
        assert (link / "app").read_bytes() == b"synced at start\n"
        port = int(env["DUCC_LISTEN"].rsplit(":", 1)[1])
        wait_for_port(port, timeout=30, process=serve.process)

        def page() -> str:
            return requests.get(f"http://127.0.0.1:{port}/", timeout=10).text

        wait_until(lambda: "not found" in page(), "the page never showed the failed entry", proc=serve)
        html = page()
        assert "first sync queued" in serve.log() and "Wishlist" in html and str(wishlist) in html
        assert "next sync 20" in html and "03:00:00 UTC" in html and "<code>0 3 * * *</code>" in html
        assert str(ref) in html and str(missing) in html
        row = html[html.index(f"<td>{ref}</td>"):]
        assert ">published<" in row.split("</tr>")[0]
        row = html[html.index(f"<td>{missing}</td>"):]
        assert "failed" in row.split("</tr>")[0]
        assert TOKEN_WARNING in serve.log()  # none configured here: the operator is told at start
        assert "Traceback" not in serve.log(), serve.log()[-3000:]
    finally:
        serve.stop()


def test_no_initial_sync_waits_for_the_schedule(client, unique_ref, tmp_path):
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[Layer([File("app", b"later\n")])]))
    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text(f"version: 1\ninput: ['{ref}']\n")
    env = serve_env(tmp_path, DUCC_WEBHOOK_TOKEN="a-token")
    serve = DuccProcess(["serve", "--wishlist", str(wishlist), "--no-initial-sync"], env, tmp_path / "serve.log").start()
    try:
        serve.wait_for_log("ready.", timeout=90)
        port = int(env["DUCC_LISTEN"].rsplit(":", 1)[1])
        wait_for_port(port, timeout=30, process=serve.process)
        # serve decided (and logged) before this probe is queued; the worker takes the one Celery queue in
        # order, so once it has run the probe it has taken every message serve queued: none was a sync.
        serve.wait_for_log("no sync now (--no-initial-sync)")
        from ducc.service.queue import RECONCILE_TASK
        from ducc.settings import Settings
        from ducc.wiring import Services

        probe = Services(Settings.from_env(env)).celery().send_task(RECONCILE_TASK)
        serve.wait_for_log(f"Task {RECONCILE_TASK}[{probe.id}] succeeded")
        assert "Task ducc.sync[" not in serve.log()
        assert not (tmp_path / "root" / layout.tag_link(ref)).exists()
        assert ducc("jobs", env=env).stdout == ""
        html = requests.get(f"http://127.0.0.1:{port}/", timeout=10).text
        row = html[html.index(f"<td>{ref}</td>"):].split("</tr>")[0]
        assert "not yet converted" in row and "not synced yet" in html and "next sync 20" in html
        assert "--no-initial-sync" in serve.log() and TOKEN_WARNING not in serve.log()
    finally:
        serve.stop()


def test_a_missing_or_invalid_wishlist_stops_serve_before_anything_starts(tmp_path):
    env = serve_env(tmp_path)
    missing = tmp_path / "missing.yaml"
    done = ducc("serve", "--wishlist", str(missing), env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"ducc: cannot read wishlist {missing}: No such file or directory"]
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("version: 1\ninput: ['Not An Image']\n")
    done = ducc("serve", env={**env, "DUCC_WISHLIST": str(invalid)})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"ducc: wishlist {invalid}: input #1: ")
    for argv, extra, expected in [
        (["--root", "/proc/x"], {}, "ducc: repository root /proc/x cannot be created: No such file or directory"),
        ([], {"DUCC_SYNC_SCHEDULE": "at three"}, "ducc: DUCC_SYNC_SCHEDULE 'at three' is not a 5-field cron expression"),
    ]:
        done = ducc("serve", *argv, env={**env, **extra})
        assert done.returncode == 2 and done.stderr.splitlines() == [expected], done.stderr
    assert not (tmp_path / "state" / "redis").exists(), "nothing may start before the checks"


def test_a_second_serve_on_the_same_state_directory_refuses_and_leaves_the_first_alone(tmp_path):
    env = serve_env(tmp_path, DUCC_WEBHOOK_TOKEN="a-token")
    first = DuccProcess(["serve", "--no-web"], env, tmp_path / "first.log").start()
    try:
        first.wait_for_log("ready.", timeout=90)
        socket = tmp_path / "state" / "redis" / "redis.sock"
        before = socket.stat().st_ino
        second = ducc("serve", "--no-web", env=env)
        assert second.returncode == 69 and "Traceback" not in second.stderr
        assert second.stderr.splitlines() == [
            f"ducc: another ducc serve (pid {first.process.pid}) is running with the state directory "
            f"{tmp_path / 'state'}; stop it first, or give this one its own DUCC_STATE_DIR"]
        assert socket.stat().st_ino == before  # the first one's Redis socket untouched
        listed = ducc("jobs", env=env)  # the CLI still finds the first service
        assert listed.returncode == 0, listed.stderr
        assert first.process.poll() is None and "starting redis" not in second.stderr
    finally:
        first.stop()
    # Once the first has stopped, the state directory is free again.
    again = DuccProcess(["serve", "--no-web"], env, tmp_path / "again.log").start()
    try:
        again.wait_for_log("ready.", timeout=90)
    finally:
        again.stop()


def _children(pid: int) -> dict[str, int]:
    """The supervisor's children by role, read from /proc (what a process-tree view would show)."""
    found: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            text = b" ".join(argv).decode(errors="replace")
            role = ("redis" if "redis-server" in text else "web" if "gunicorn" in text or argv[-2:-1] == [b"web"]
                    else next((r for r in ("worker", "beat", "web") if f"ducc {r}" in text), text))
            found[role] = int(child)
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_to_the_whole_group_stops_web_beat_and_the_worker_before_redis_in_that_order(signum, tmp_path):
    """Ctrl-C in a terminal, or a whole-group kill, signals every process of the group at once: only the
    supervisor may receive it, so that Redis outlives the worker that still records its results."""
    env = serve_env(tmp_path, DUCC_WEBHOOK_TOKEN="a-token")
    serve = DuccProcess(["serve"], env, tmp_path / "serve.log").start()
    assert serve.process is not None
    try:
        serve.wait_for_log("ready.", timeout=90)
        wait_for_port(int(env["DUCC_LISTEN"].rsplit(":", 1)[1]), timeout=30, process=serve.process)
        children = _children(serve.process.pid)
        assert sorted(children) == ["beat", "redis", "web", "worker"], children
        os.killpg(serve.process.pid, signum)  # the supervisor leads the group the test started it in
        order: list[str] = []
        deadline = time.monotonic() + 90
        while len(order) < len(children):
            assert time.monotonic() < deadline, f"still running after 90 s: {set(children) - set(order)}"
            order += [role for role, pid in children.items() if role not in order and _gone(pid)]
            time.sleep(0.01)
        print(f"stopped in this order: {order}")
        assert order == ["web", "beat", "worker", "redis"], order
        assert serve.process.wait(30) == 0
        assert "ducc stopped" in serve.log()
    finally:
        serve.stop()
