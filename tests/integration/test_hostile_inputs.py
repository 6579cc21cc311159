"""Hostile inputs, through the real ``ducc`` command, a real registry (with the fault proxy in front where
it must lie) and the web app on a real Redis: a wishlist that is an alias bomb or too large, a platform
outside the OCI grammar from every entry point, escape sequences in a registry's error body, a reader
that goes away. Every failure is one line with the documented exit status, and nothing is published."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ducc import layout
from ducc.model.digest import Digest
from ducc.model.reference import Reference
from ducc.service.jobs import JobStore
from ducc.settings import Settings
from ducc.web import create_app
from tests.support.images import File, ImageSpec, Layer, push_image, push_index
from tests.support.proxy import via

USAGE, FAILED, BROKEN_PIPE = 2, 1, 141
TOKEN = "hostile-inputs-token"
MEMORY_LIMIT = 1 << 30  # address space of the ducc process: the bomb used to need gigabytes


def ducc(*args: str, env: dict[str, str] | None = None, memory: int | None = None
         ) -> tuple[subprocess.CompletedProcess[str], float]:
    """The real command, its CPU seconds alongside (children's user + system time)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("DUCC_")}
    full.update({"DUCC_CACHE_DIR": "off", "DUCC_RETRY_ATTEMPTS": "2", **(env or {})})

    def limit() -> None:
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-m", "ducc", *args], env=full, capture_output=True, text=True,
                          timeout=120, preexec_fn=limit)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert "Traceback" not in done.stderr and "Error" not in done.stderr.split(":")[0], done.stderr
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ducc: "), done.stderr
    assert lines[0].isprintable(), lines[0]
    return lines[0][len("ducc: "):]


def visible(root: Path) -> list[str]:
    """Everything a user could reach (public paths, records), not the content-addressed trees."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if not str(p.relative_to(root)).startswith((".layers", ".ducc-staging", ".flat", ".ducc-repository")))


def bomb() -> str:
    """The billion laughs: nine levels of nine aliases each, 339 bytes, 9**9 strings once expanded."""
    names = "abcdefghi"
    parts = ["&a [x,x,x,x,x,x,x,x,x]"] + [f"&{n} [" + ",".join([f"*{p}"] * 9) + "]" for p, n in zip(names, names[1:], strict=False)]
    return f"version: 1\nuser: [{', '.join(parts)}, *i]\ninput: ['127.0.0.1:1/a/b:1']\n"


# -- wishlists ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["check-wishlist", "--no-expand"], ["sync"], ["serve", "--no-web", "--wishlist"]],
                         ids=["check-wishlist", "sync", "serve"])
def test_an_alias_bomb_wishlist_is_one_line_in_a_second_of_cpu_within_a_gigabyte(argv, tmp_path):
    wishlist = tmp_path / "bomb.yaml"
    wishlist.write_text(bomb())
    assert wishlist.stat().st_size < 500
    env = {"DUCC_ROOT": str(tmp_path / "root"), "DUCC_STATE_DIR": str(tmp_path / "state")}
    done, cpu = ducc(*argv, str(wishlist), env=env, memory=MEMORY_LIMIT)
    line = one_line(done, USAGE)
    print(f"{argv[0]}: {cpu:.2f} s of CPU")
    assert line == (f"wishlist {wishlist}: line 2: YAML anchors and aliases (&name, *name) are not allowed in a "
                    "wishlist; write each entry out")
    assert cpu < 5  # the interpreter's start and imports; the bomb itself costs milliseconds
    assert not (tmp_path / "root").exists() or visible(tmp_path / "root") == []


def test_a_wishlist_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    wishlist = tmp_path / "huge.yaml"
    with open(wishlist, "wb") as file:
        file.truncate(64 << 20)  # sparse: reading it would take 64 MiB, parsing it far more
    done, cpu = ducc("check-wishlist", "--no-expand", str(wishlist), memory=MEMORY_LIMIT)
    assert one_line(done, USAGE) == f"wishlist {wishlist} is larger than a wishlist may be (8.0 MiB): 64.0 MiB"
    assert cpu < 5


# -- platforms -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("platform,shown", [("linux/..", "'..'"), ("linux/.", "'.'"), ("../amd64", "'..'"),
                                            ("linux/amd64/..", "'..'"), ("linux/a\x1b[2Jb", r"'a\x1b[2jb'"),
                                            ("linux/" + "x" * 100, "'xxxxxxxx")],
                         ids=["dotdot", "dot", "dotdot-os", "dotdot-variant", "escape-sequence", "too-long"])
def test_a_platform_outside_the_grammar_is_a_usage_error_of_every_command(platform, shown, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    for argv in (["convert", "127.0.0.1:1/a/b:1", "--root", str(root)], ["submit", "127.0.0.1:1/a/b:1"],
                 ["rm", "127.0.0.1:1/a/b:1", "--root", str(root)], ["inspect", "127.0.0.1:1/a/b:1", "--root", str(root)],
                 ["status", "127.0.0.1:1/a/b:1"]):
        done, _ = ducc(*argv, "--platform", platform, env={"DUCC_REDIS_URL": "redis://127.0.0.1:1/0"})
        line = one_line(done, USAGE)
        assert line.startswith(f"{argv[0]}: argument --platform: platform ") and shown in line, line
    done, _ = ducc("list", "--root", str(root), env={"DUCC_PLATFORM": platform})
    assert one_line(done, USAGE).startswith("DUCC_PLATFORM: platform ")
    assert visible(root) == []


def test_an_index_entry_outside_the_grammar_fails_the_image_for_good_and_publishes_nothing(client, unique_ref, root):
    """Before, ``--platform linux/..`` chose the ``..`` entry and published it over the default public path;
    the amd64 image was then "already current". Now the index itself is refused, whatever is asked for."""
    ref = unique_ref()
    push_index(client, ref, [ImageSpec(layers=[Layer([File("arch", b"amd64")])]),
                             ImageSpec(layers=[Layer([File("arch", b"hostile")])], architecture="..")])
    done, _ = ducc("-q", "convert", str(ref), "--root", str(root))
    line = one_line(done, FAILED)
    assert "index entry 1: platform 'linux/..': architecture '..' is not a lowercase name" in line, line
    done, _ = ducc("convert", str(ref), "--platform", "linux/..", "--root", str(root))
    one_line(done, USAGE)
    assert visible(root) == []

    from ducc.convert import Converter
    from ducc.errors import InvalidManifest
    from ducc.publish.directory import DirectoryPublisher

    with pytest.raises(InvalidManifest) as refused:
        Converter(client, DirectoryPublisher(root)).convert(ref)
    assert not refused.value.temporary  # the service fails the job at once instead of retrying it


# -- the command line ------------------------------------------------------------------------------------


def test_convert_with_a_bad_reference_among_good_ones_is_a_usage_error_before_any_work(client, unique_ref, root):
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[Layer([File("a", b"a")])]))
    done, _ = ducc("-q", "convert", str(ref), "Not A Reference", "--root", str(root))
    assert "'Not A Reference'" in one_line(done, USAGE)
    assert visible(root) == []  # the good image, first on the line, was not converted either
    done, _ = ducc("-q", "convert", "Not A Reference", "--root", str(root / "new"))
    one_line(done, USAGE)
    assert not (root / "new").exists()  # not even the root was made


def test_status_wait_takes_only_a_finite_number_of_seconds():
    for wait in ("nan", "inf", "-1", "soon"):
        started = time.monotonic()
        done, _ = ducc("status", "127.0.0.1:1/a/b:1", "--wait", wait, env={"DUCC_REDIS_URL": "redis://127.0.0.1:1/0"})
        assert one_line(done, USAGE) == (f"status: argument --wait: {wait!r} is not a number of seconds (0 or more) "
                                         "(see ducc status --help)")
        assert time.monotonic() - started < 30


def test_jobs_says_when_the_limit_asked_for_is_more_than_ducc_keeps(redis_server):
    env = {"DUCC_REDIS_URL": redis_server.url}
    done, _ = ducc("jobs", "--limit", "5000", env=env)
    assert done.returncode == 0 and done.stdout == ""
    assert one_line(done, 0) == ("--limit 5000: ducc keeps only the 1,000 most recent jobs in its list; "
                                 "ducc status JOB_ID still finds an older job until DUCC_JOB_TTL")
    done, _ = ducc("jobs", "--limit", "1000", env=env)
    assert done.returncode == 0 and done.stderr == ""
    for limit in ("0", "-3"):
        done, _ = ducc("jobs", "--limit", limit, env=env)
        assert "is not a whole number of 1 or more" in one_line(done, USAGE)


ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\x9b1mC1\rover"


def test_escape_sequences_from_a_registry_error_body_are_printed_escaped(client, unique_ref, proxy, root):
    ref = via(proxy, unique_ref())
    push_image(client, ref, ImageSpec(layers=[Layer([File("a", b"a")])]))
    body = json.dumps({"errors": [{"code": "DENIED", "message": ESCAPES}]}).encode()
    proxy.add("status", "/manifests/", method="GET", times=-1, status=403, body=body)  # HEAD has no body
    done, _ = ducc("-q", "convert", str(ref), "--root", str(root))
    line = one_line(done, FAILED)
    assert "\x1b" not in done.stderr and "\x9b" not in done.stderr and "\r" not in done.stderr
    assert r"DENIED: \x1b]0;owned\x07\x1b[2J\x1b[31mred\x9b1mC1 over" in line, line  # \r: whitespace, folded
    # without -q the log lines on the way carry the same text, escaped the same way
    done, _ = ducc("-v", "convert", str(ref), "--root", str(root))
    assert done.returncode == FAILED and "\x1b" not in done.stderr and r"\x1b]0;owned" in done.stderr
    # and so does a traceback, which -v logs for a failure ducc did not foresee: its last line is the
    # exception's message, which may quote a registry too
    from ducc.logs import EscapingFormatter

    try:
        raise RuntimeError(ESCAPES)
    except RuntimeError:
        import logging

        record = logging.LogRecord("ducc", logging.ERROR, __file__, 1, "failed: %s", (ESCAPES,), sys.exc_info())
    text = EscapingFormatter("%(message)s").format(record)
    assert "\x1b" not in text and "\x9b" not in text and text.count(r"\x1b]0;owned") == 2, text


def test_status_and_jobs_print_a_reason_from_outside_escaped(redis_server, tmp_path):
    """A job's reason and events quote registries; ``status`` and ``jobs`` show them escaped. The job is
    recorded through the stores the worker uses, in the real Redis."""
    from ducc.model.reference import Reference
    from ducc.model.request import ConversionRequest
    from ducc.service.jobs import JobState
    from ducc.wiring import Services

    env = {"DUCC_REDIS_URL": redis_server.url, "DUCC_ROOT": str(tmp_path / "root"),
           "DUCC_STATE_DIR": str(tmp_path / "state")}
    services = Services(Settings.from_env({"HOME": os.environ.get("HOME", "/root"), **env}))
    job_id = services.queue.submit(ConversionRequest(Reference.parse("127.0.0.1:1/a/b:1")), "api").job_id
    reason = f"manifest: HTTP 403 DENIED: {ESCAPES}"
    services.jobs.event(job_id, JobState.FAILED, reason, error=reason, temporary=0, attempts=1)  # as the worker
    for argv in (["status", job_id], ["jobs"]):
        done, _ = ducc(*argv, env=env)
        assert "\x1b" not in done.stdout and "\x9b" not in done.stdout and "\r" not in done.stdout, done.stdout
        assert r"\x1b]0;owned\x07\x1b[2J" in done.stdout, done.stdout


def test_a_reader_that_goes_away_ends_ducc_quietly(client, unique_ref, root, tmp_path):
    """``ducc list | head -1`` (and any other command whose output is cut short): no "Broken pipe", no
    traceback, the status a shell gives other tools there (141, 128 + SIGPIPE)."""
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[Layer([File("a", b"a")])]))
    done, _ = ducc("convert", str(ref), "--root", str(root))
    assert done.returncode == 0, done.stderr
    link = root / layout.tag_link(ref)
    for n in range(3000):  # more lines than a pipe holds, all leading to the one real flat root
        os.symlink(os.readlink(link), link.with_name(f"{link.name}-{n:04d}"))
    wishlist = tmp_path / "many.yaml"
    wishlist.write_text("version: 1\ninput:\n" + "".join(f"  - 127.0.0.1:1/team/app:{n}\n" for n in range(3000)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUCC_")} | {"DUCC_CACHE_DIR": "off"}
    for command in (f"list --root {root}", f"check-wishlist --no-expand {wishlist}"):
        shell = f"{sys.executable} -m ducc {command} | head -1; echo \"exit=${{PIPESTATUS[0]}}\" >&2"
        done = subprocess.run(["bash", "-c", shell], env=env, capture_output=True, text=True, timeout=120)
        assert done.stderr == f"exit={BROKEN_PIPE}\n", done.stderr
        assert len(done.stdout.splitlines()) == 1


# -- the web app -----------------------------------------------------------------------------------------


@pytest.fixture
def app_settings(redis_server, root, tmp_path) -> Settings:
    return Settings.from_env({
        "HOME": os.environ.get("HOME", "/root"), "DUCC_REDIS_URL": redis_server.url, "DUCC_ROOT": str(root),
        "DUCC_WEBHOOK_TOKEN": TOKEN, "DUCC_ALLOW": "127.0.0.1:5000/allowed/*", "DUCC_STATE_DIR": str(tmp_path / "state"),
    })


def web_client(settings: Settings):  # type: ignore[no-untyped-def]
    app = create_app(settings)
    app.testing = True
    return app.test_client()


@pytest.mark.parametrize("platform", ["linux/am\x00d64", "linux/..", "linux/amd64/..", "linux/a\x1bb", "../amd64"],
                         ids=["nul", "dotdot", "dotdot-variant", "escape", "dotdot-os"])
def test_the_api_answers_400_for_a_platform_outside_the_grammar_and_queues_nothing(app_settings, redis_server, platform):
    web = web_client(app_settings)
    image = "127.0.0.1:5000/allowed/app:1"
    response = web.get("/api/v1/images", query_string={"ref": image, "platform": platform})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["error"].startswith("?platform= must be os/arch[/variant]: platform "), response.json
    response = web.post("/api/v1/conversions", json={"image": image, "platform": platform},
                        headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 400 and response.json["error"].startswith("platform "), response.json
    assert JobStore(redis_server.client()).recent_jobs(10) == []


def test_a_wishlist_bomb_allows_nothing_and_the_web_app_says_why_at_once(app_settings, redis_server, tmp_path):
    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text(bomb().replace("127.0.0.1:1/a/b:1", "127.0.0.1:5000/wished/app:1"))
    settings = Settings.from_env({**app_settings.env, "DUCC_WISHLIST": str(wishlist)})
    web = web_client(settings)
    started = time.process_time()
    response = web.post("/api/v1/conversions", json={"image": "127.0.0.1:5000/wished/app:1"},
                        headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 403
    assert "YAML anchors and aliases (&name, *name) are not allowed" in response.json["error"]
    page = web.get("/")
    assert page.status_code == 200 and "YAML anchors and aliases" in page.get_data(as_text=True)
    assert time.process_time() - started < 2
    assert JobStore(redis_server.client()).recent_jobs(10) == []


def test_a_wishlist_entry_with_a_hostile_platform_is_refused_by_every_reader(tmp_path):
    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text("version: 1\ninput:\n  - image: 127.0.0.1:1/a/b:1\n    platforms: [linux/..]\n")
    done, _ = ducc("check-wishlist", "--no-expand", str(wishlist))
    line = one_line(done, USAGE)
    assert line.startswith(f"wishlist {wishlist}: input #1: platform 'linux/..': architecture '..'"), line


def test_a_blob_longer_than_its_descriptor_names_its_digest_once(client, unique_ref, proxy, root):
    ref = via(proxy, unique_ref())
    built = push_image(client, ref, ImageSpec(layers=[Layer([File("a", os.urandom(1000))])]))
    layer: Digest = built.layer_digests[0]
    manifest = json.loads(built.manifest)
    manifest["layers"][0]["size"] -= 10  # the registry serves the whole blob: 10 bytes more than announced
    short = Reference(ref.registry, ref.repository, "short")
    client.push_manifest(short, json.dumps(manifest).encode(), built.manifest_media_type)
    done, _ = ducc("-q", "convert", str(short), "--root", str(root))
    line = one_line(done, FAILED)
    assert line.count(layer.hex) == 1, line
    # Refused from the Content-Length before reading, or while streaming: either way one digest, two sizes.
    assert re.search(rf"(layer|blob) {layer}( of \S+)?: expected \d+ bytes, got \d+ bytes", line), line
    assert visible(root) == []


def five_megabyte_wishlist(path: Path) -> int:
    """Write a wishlist of 5 MB (entry n is ``registry.example.org/team/image<n>:1.<n>``); returns how many."""
    with open(path, "w") as file:
        file.write("version: 1\ninput:\n")
        n = 0
        while file.tell() < 5_000_000:
            file.write(f"  - 'https://registry.example.org/team/image{n}:1.{n}'\n")
            n += 1
    return n


def synced_every_image(app_settings: Settings, wishlist: Path, n: int) -> None:
    """Record a sync that found every image current, through the store the worker uses."""
    from ducc.service import lastsync
    from ducc.wiring import Services

    outcomes = tuple(lastsync.ImageOutcome(f"registry.example.org/team/image{i}:1.{i}", "linux/amd64", "unchanged")
                     for i in range(n))
    lastsync.record(Services(app_settings).redis, lastsync.LastSync(time.time(), str(wishlist), outcomes))


def wishlist_table(html: str) -> str:
    return html.split("<h2>Wishlist</h2>")[1].split("<h2>Recent jobs</h2>")[0]


def test_a_five_megabyte_wishlist_is_shown_a_page_at_a_time(app_settings, tmp_path):
    """Before, the status page listed every row of the wishlist: 85,000 entries made 21 MB of HTML on every
    refresh (every 10 s). Now it shows 100 rows a page and looks up only those (how long a page takes is
    test_timing_of_the_status_page_of_a_five_megabyte_wishlist's, a benchmark)."""
    wishlist = tmp_path / "wishlist.yaml"
    n = five_megabyte_wishlist(wishlist)
    web = web_client(Settings.from_env({**app_settings.env, "DUCC_WISHLIST": str(wishlist)}))
    for query, first, last in [("/", 0, 99), ("/?page=2", 100, 199), (f"/?page={n // 100 + 1}", n - n % 100, n - 1),
                               ("/?page=99999", n - n % 100, n - 1), ("/?page=3&per_page=500", 1000, 1499)]:
        response = web.get(query)
        html = response.get_data(as_text=True)
        table = wishlist_table(html)
        assert response.status_code == 200 and len(html) < 300_000, (query, len(html))
        assert f"team/image{first}:1.{first}<" in table and f"team/image{last}:1.{last}<" in table, query
        assert f"team/image{first - 1}:" not in table and f"team/image{last + 1}:" not in table, query
        assert f"of {n} (page " in table
    synced_every_image(app_settings, wishlist, n)  # the rows now show its outcomes
    for query in ("/?page=7", "/?page=8"):
        assert wishlist_table(web.get(query).get_data(as_text=True)).count("current at the last sync") == 100
    for query, message in [("/?page=0", "?page= must be a whole number of 1 or more"),
                           ("/?page=two", "?page= must be a whole number of 1 or more"),
                           ("/?per_page=501", "?per_page= may be at most 500")]:
        response = web.get(query)
        assert response.status_code == 400 and message in response.get_data(as_text=True), query


@pytest.mark.bench
def test_timing_of_the_status_page_of_a_five_megabyte_wishlist(app_settings, tmp_path):
    """Listing every row, the page took 6-14 s on every refresh (every 10 s); a page of 100 rows must not."""
    wishlist = tmp_path / "wishlist.yaml"
    n = five_megabyte_wishlist(wishlist)
    web = web_client(Settings.from_env({**app_settings.env, "DUCC_WISHLIST": str(wishlist)}))

    def seconds(query: str) -> float:
        started = time.monotonic()
        assert web.get(query).status_code == 200, query
        return time.monotonic() - started

    timings = [seconds(q) for q in ("/", "/", "/?page=2", f"/?page={n // 100 + 1}", "/?page=3&per_page=500")]
    print(f"{n} entries, {wishlist.stat().st_size / 1e6:.1f} MB: first page {timings[0]:.2f} s (reading the "
          f"wishlist), then {', '.join(f'{t:.2f}' for t in timings[1:])} s")
    assert timings[0] < 20 and max(timings[1:]) < 5
    synced_every_image(app_settings, wishlist, n)
    timings = [seconds(q) for q in ("/?page=7", "/?page=8", "/?page=9")]
    print(f"after a sync of every image: {', '.join(f'{t:.2f}' for t in timings)} s")
    assert max(timings[1:]) < 5
