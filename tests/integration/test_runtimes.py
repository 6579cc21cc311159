"""Converted images run for real, as an unprivileged user, under Charliecloud's ``ch-run`` and under
``bwrap``: the way an HPC user meets them. Programs inside the images are real programs of this
machine (a shell, printf, env) with their libraries, so no network is needed."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ducc import layout
from ducc.convert import Converter
from ducc.publish.directory import DirectoryPublisher
from tests.support.images import Dir, File, ImageSpec, Layer, Symlink, host_programs_layer, push_image
from tests.support.trees import snapshot

PROGRAMS = ["/bin/sh", "/usr/bin/printf", "/usr/bin/env", "/usr/bin/cat"]
NOBODY = 65534
RUNTIMES = ["ch-run", "bwrap"]


@pytest.fixture(scope="module")
def programs() -> Layer:
    # Every real image has these two; ch-run binds over them to map the user.
    accounts = [Dir("etc"), File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"), File("etc/group", b"root:x:0:\n")]
    layer = host_programs_layer(PROGRAMS)
    return Layer(accounts + layer.entries)


@pytest.fixture
def world_root() -> Iterator[Path]:
    """A repository root the unprivileged user can reach (pytest's own tmp is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="ducc-runtime-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path / "repo"
    shutil.rmtree(path, ignore_errors=True)


def run_in(runtime: str, flat: Path, *command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``command`` inside ``flat`` with ``runtime``, as an unprivileged user."""
    if shutil.which(runtime) is None:
        pytest.fail(f"{runtime} is not installed: run ./bootstrap.sh")
    if runtime == "ch-run":
        argv = ["ch-run", str(flat), "--", *command]
    else:
        argv = ["bwrap", "--unshare-user", "--unshare-pid", "--ro-bind", str(flat), "/", "--proc", "/proc",
                "--dev", "/dev", "--tmpfs", "/tmp", "--", *command]
    if os.geteuid() == 0:
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    base = {"USER": "nobody", "HOME": "/", "PATH": "/usr/bin:/bin", "LANG": "C"}
    return subprocess.run(argv, env={**base, **(env or {})}, capture_output=True, text=True, timeout=60)


def convert(client, unique_ref, root: Path, spec: ImageSpec) -> Path:
    ref = unique_ref()
    push_image(client, ref, spec)
    Converter(client, DirectoryPublisher(root)).convert(ref)
    return (root / layout.tag_link(ref)).resolve()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_command_from_the_image_runs_unprivileged(runtime, client, unique_ref, world_root, programs):
    flat = convert(client, unique_ref, world_root, ImageSpec(layers=[programs, Layer([File("etc/motd", b"inside the image\n")])]))
    done = run_in(runtime, flat, "/.singularity.d/actions/exec", "/usr/bin/cat", "/etc/motd")
    assert (done.returncode, done.stdout) == (0, "inside the image\n"), done.stderr


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_env_script_gives_the_image_env_and_the_users_value_wins(runtime, client, unique_ref, world_root, programs):
    spec = ImageSpec(layers=[programs], env=["PATH=/opt/tools/bin:/usr/bin:/bin", "FOO=from-image", "BAR=from-image",
                                             "BAR=image-later-wins"])
    flat = convert(client, unique_ref, world_root, spec)
    show = 'printf "%s|%s|%s" "$FOO" "$BAR" "$PATH"'
    done = run_in(runtime, flat, "/.singularity.d/actions/exec", "/bin/sh", "-c", show)
    assert done.stdout.split("|")[:2] == ["from-image", "image-later-wins"], done.stderr
    assert done.stdout.split("|")[2].startswith("/opt/tools/bin:/usr/bin:/bin")
    mine = run_in(runtime, flat, "/.singularity.d/actions/exec", "/bin/sh", "-c", show, env={"BAR": "the user's"})
    assert mine.stdout.split("|")[:2] == ["from-image", "the user's"], mine.stderr


TRICKY = "dollar $HOME and ${X:-y}, \"double\" 'single' back\\slash `backtick` $(echo no)\nsecond line\t tab"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_tricky_env_value_round_trips_exactly(runtime, client, unique_ref, world_root, programs):
    flat = convert(client, unique_ref, world_root, ImageSpec(layers=[programs], env=["PATH=/usr/bin:/bin", f"TRICKY={TRICKY}"]))
    done = run_in(runtime, flat, "/.singularity.d/actions/exec", "/bin/sh", "-c", 'printf "%s" "$TRICKY"')
    assert done.stdout == TRICKY, done.stderr


SHOW_ARGS = 'printf "[%s]" "$0" "$@"'
USER_ARGS = ["two words", 'a "quoted" one', "$HOME", "back`tick`", "it's", "-n"]
RUNSCRIPT_CASES = {
    "entrypoint_and_cmd_no_args": (["/bin/sh", "-c", SHOW_ARGS, "ep"], ["default arg", "x"], [], "[ep][default arg][x]"),
    "entrypoint_and_cmd_args_replace_cmd": (["/bin/sh", "-c", SHOW_ARGS, "ep"], ["default arg"], USER_ARGS,
                                            "[ep]" + "".join(f"[{a}]" for a in USER_ARGS)),
    "entrypoint_only": (["/bin/sh", "-c", SHOW_ARGS, "ep only"], None, [], "[ep only]"),
    "entrypoint_only_with_args": (["/bin/sh", "-c", SHOW_ARGS, "ep"], None, ["x y"], "[ep][x y]"),
    "cmd_only": (None, ["/bin/sh", "-c", SHOW_ARGS, "cmd $0"], [], "[cmd $0]"),
    "cmd_only_args_replace_it": (None, ["/bin/false"], ["/bin/sh", "-c", SHOW_ARGS, "mine", "a b"], "[mine][a b]"),
}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("case", list(RUNSCRIPT_CASES), ids=list(RUNSCRIPT_CASES))
def test_runscript_reproduces_docker_run(case, runtime, client, unique_ref, world_root, programs):
    entrypoint, cmd, args, expected = RUNSCRIPT_CASES[case]
    flat = convert(client, unique_ref, world_root, ImageSpec(layers=[programs], entrypoint=entrypoint, cmd=cmd))
    done = run_in(runtime, flat, "/.singularity.d/actions/run", *args)
    assert (done.returncode, done.stdout) == (0, expected), done.stderr
    via_symlink = run_in(runtime, flat, "/singularity", *args)
    assert via_symlink.stdout == expected


def test_flat_root_has_what_singularity_needs(client, unique_ref, world_root, programs):
    flat = convert(client, unique_ref, world_root, ImageSpec(layers=[programs], labels={"org.example.v": "1"},
                                                             working_dir="/work", user="1000"))
    for directory in ("cvmfs", "dev", "proc", "sys", "tmp", "var/tmp", "home", "root", "etc",
                      ".singularity.d/actions", ".singularity.d/env", ".singularity.d/libs"):
        assert (flat / directory).is_dir(), directory
    for name in ("hosts", "resolv.conf"):
        assert (flat / "etc" / name).is_file() and (flat / "etc" / name).stat().st_size == 0
    links = {"singularity": ".singularity.d/runscript", "environment": ".singularity.d/env/90-environment.sh",
             ".run": ".singularity.d/actions/run", ".exec": ".singularity.d/actions/exec",
             ".shell": ".singularity.d/actions/shell", ".test": ".singularity.d/actions/test"}
    for link, target in links.items():
        assert os.readlink(flat / link) == target
    for script in ("01-base.sh", "10-docker2singularity.sh", "90-environment.sh", "95-apps.sh", "99-base.sh", "99-runtimevars.sh"):
        assert (flat / ".singularity.d/env" / script).stat().st_mode & 0o005 == 0o005
    import json

    assert json.loads((flat / ".singularity.d/labels.json").read_text()) == {"org.example.v": "1"}
    assert 'eval "set ${SINGULARITY_OCI_RUN}"' in (flat / ".singularity.d/runscript").read_text()
    summary = json.loads((flat / ".singularity.d/ducc.json").read_text())["image"]
    assert summary["working_dir"] == "/work" and summary["user"] == "1000"


def test_additions_never_modify_files_shared_with_layers_or_other_images(client, unique_ref, root, programs):
    base = Layer([Dir("etc"), File("etc/hosts", b"127.0.0.1 from-the-image\n"), File("etc/resolv.conf", b"nameserver 10.0.0.1\n"),
                  Dir("tmp"), File("tmp/keep", b"k")])
    converter = Converter(client, DirectoryPublisher(root))
    first = unique_ref("first")
    built = push_image(client, first, ImageSpec(layers=[base, Layer([File("one", b"1")])]))
    converter.convert(first)
    layers_before = snapshot(root / ".layers")
    first_flat = (root / layout.tag_link(first)).resolve()
    first_before = snapshot(first_flat)
    second = unique_ref("second")
    push_image(client, second, ImageSpec(layers=[base, Layer([File("two", b"2")])], env=["A=b"]))
    converter.convert(second)
    layers_after = snapshot(root / ".layers")
    assert {path: layers_after[path] for path in layers_before} == layers_before  # the new top layer aside
    assert snapshot(first_flat) == first_before
    layer_hosts = root / layout.layerfs(built.layer_digests[0]) / "etc/hosts"
    assert layer_hosts.read_bytes() == b"127.0.0.1 from-the-image\n"
    for flat in (first_flat, (root / layout.tag_link(second)).resolve()):
        assert (flat / "etc/hosts").read_bytes() == b""
        assert not os.path.samefile(flat / "etc/hosts", layer_hosts)
        assert os.path.samefile(flat / "tmp/keep", root / layout.layerfs(built.layer_digests[0]) / "tmp/keep")


def test_image_symlinks_in_the_way_are_left_alone_and_never_followed(client, unique_ref, root, tmp_path, caplog):
    outside = tmp_path / "host-etc"
    outside.mkdir()
    flat = convert(client, unique_ref, root, ImageSpec(layers=[Layer([Symlink("etc", str(outside)), File("tmp", b"a file")])]))
    assert os.readlink(flat / "etc") == str(outside)
    assert list(outside.iterdir()) == []
    assert (flat / "tmp").read_bytes() == b"a file"
    assert "etc is a symlink in the image" in caplog.text
