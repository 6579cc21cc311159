"""The backend table: one row per DUCC_PUBLISHER name, the option that names a row's repository chooses it,
and each row builds its view and checks its preflight from settings alone."""

from __future__ import annotations

import argparse
import os

import pytest

from ducc.errors import PublishError, RepositoryUnusable
from ducc.publish import backends
from ducc.settings import PUBLISHERS, Settings


def parse(argv: list[str], settings: Settings) -> Settings:
    parser = argparse.ArgumentParser(prog="ducc-test", exit_on_error=False)
    backends.add_options(parser)
    return backends.apply_options(parser.parse_args(argv), settings)


def test_every_publisher_name_has_exactly_one_row():
    names = [backend.name for backend in backends.BACKENDS]
    assert sorted(names) == sorted(PUBLISHERS) and len(set(names)) == len(names)
    flags = [backend.option.flag for backend in backends.BACKENDS]
    assert len(set(flags)) == len(flags)
    for backend in backends.BACKENDS:
        assert backend.option.env in backend.settings  # the variable its option overrides is one of its settings


def test_the_root_option_chooses_the_directory_backend_even_where_a_cvmfs_repository_is_configured(tmp_path):
    settings = Settings.from_env({"HOME": str(tmp_path), "DUCC_CVMFS_REPO": "repo.example.org"})
    assert backends.of(settings) is backends.CVMFS
    chosen = parse(["--root", str(tmp_path / "root")], settings)
    assert backends.of(chosen) is backends.DIRECTORY
    assert chosen.root == tmp_path / "root" and chosen.env["DUCC_ROOT"] == str(tmp_path / "root")
    view = backends.of(chosen).view(chosen, chosen.root)
    assert view.location == tmp_path / "root" and not view.exists()  # reading never creates it


def test_the_cvmfs_option_chooses_the_cvmfs_backend_and_its_view_reads_the_mount(tmp_path):
    settings = Settings.from_env({"HOME": str(tmp_path), "DUCC_CVMFS_MOUNT": str(tmp_path)})
    chosen = parse(["--cvmfs-repo", "repo.example.org/containers"], settings)
    assert backends.of(chosen) is backends.CVMFS and chosen.env["DUCC_PUBLISHER"] == "cvmfs"
    view = backends.of(chosen).view(chosen, chosen.root)
    assert view.location == tmp_path / "containers"


def test_two_repository_options_at_once_are_refused(tmp_path):
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        parse(["--root", str(tmp_path), "--cvmfs-repo", "repo.example.org"], Settings.from_env({"HOME": str(tmp_path)}))


@pytest.mark.parametrize(("env", "argv", "asked"), [
    ({}, [], False),
    ({"DUCC_ROOT": "/srv/root"}, [], True),
    ({"DUCC_PUBLISHER": "directory"}, [], True),
    ({"DUCC_CVMFS_REPO": "repo.example.org"}, [], True),
    ({}, ["--root", "/srv/root"], True),
    ({}, ["--cvmfs-repo", "repo.example.org"], True),
], ids=["nothing", "root-variable", "publisher-variable", "cvmfs-variable", "root-option", "cvmfs-option"])
def test_a_backend_counts_as_asked_for_by_its_variable_its_option_or_ducc_publisher(tmp_path, env, argv, asked):
    assert backends.asked_for(parse(argv, Settings.from_env({"HOME": str(tmp_path), **env}))) is asked


def test_the_directory_preflight_refuses_a_root_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("in the way")
    settings = Settings.from_env({"HOME": str(tmp_path)})
    with pytest.raises(RepositoryUnusable):
        backends.DIRECTORY.preflight(settings, tmp_path / "file" / "root")
    backends.DIRECTORY.preflight(settings, tmp_path / "root")
    assert (tmp_path / "root").is_dir()


def test_the_cvmfs_preflight_and_doctor_ask_for_a_repository(tmp_path):
    settings = Settings.from_env({"HOME": str(tmp_path), "DUCC_PUBLISHER": "cvmfs"})
    with pytest.raises(PublishError, match="--cvmfs-repo"):
        backends.CVMFS.preflight(settings, settings.root)
    assert backends.CVMFS.doctor is not None
    with pytest.raises(ValueError, match="--cvmfs-repo"):
        backends.CVMFS.doctor(settings)
    assert backends.DIRECTORY.doctor is None  # ducc doctor says what it checks instead


def test_podmans_store_is_one_row_its_option_preflight_and_sink_follow_the_repository(tmp_path, monkeypatch):
    """The ``Store`` row of podman's store alone reaches the CLI's options, the preflight of ``ducc serve``
    and the composition root's sinks, next to whichever backend publishes (a relative DIR is made absolute
    for the processes ``ducc serve`` starts)."""
    from ducc.wiring import Services

    assert backends.STORES == (backends.PODMAN,)
    assert backends.PODMAN.option.env in backends.PODMAN.settings
    plain = Settings.from_env({"HOME": str(tmp_path)})
    assert backends.in_use(parse(["--root", str(tmp_path / "root")], plain)) == (backends.DIRECTORY,)
    monkeypatch.chdir(tmp_path)
    settings = parse(["--root", str(tmp_path / "root"), "--podman-store", "store"], plain)
    assert settings.env["DUCC_PODMAN_STORE"] == str(tmp_path / "store") and settings.podman.store == tmp_path / "store"
    assert backends.in_use(settings) == (backends.DIRECTORY, backends.PODMAN)
    assert not backends.asked_for(parse(["--podman-store", str(tmp_path / "store")], plain))  # says nothing of the repository
    if os.geteuid() == 0:
        for row in backends.in_use(settings):
            row.preflight(settings, settings.root)
        assert (tmp_path / "root").is_dir() and (tmp_path / "store").is_dir()
        built = Services(settings)
        (sink,) = built.sinks
        assert sink.name == f"podman store {tmp_path / 'store'}"
        assert built.converter.sinks == (sink,)
    assert Services(plain).sinks == ()


@pytest.mark.skipif(os.geteuid() != 0, reason="as anyone else the refusal is that the store takes root")
def test_the_podman_preflight_refuses_in_one_line_a_store_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("in the way")
    store = tmp_path / "file" / "store"
    settings = Settings.from_env({"HOME": str(tmp_path), "DUCC_PODMAN_STORE": str(store)})
    with pytest.raises(RepositoryUnusable) as refused:
        backends.PODMAN.preflight(settings, settings.root)
    message = str(refused.value)
    assert "\n" not in message and str(store) in message and "cannot be created or written" in message
