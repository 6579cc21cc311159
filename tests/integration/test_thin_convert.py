"""Thin images as a stage of a conversion, through the ``ducc`` command: a real registry (plain and
htpasswd), the fault proxy in front of it, and skopeo and umoci to check what was pushed."""

from __future__ import annotations

import json
import os
import subprocess

from ducc import layout
from ducc.model.digest import Digest
from ducc.model.manifest import DEFAULT_PLATFORM
from ducc.model.reference import Reference
from ducc.publish.directory import DirectoryView
from ducc.web.api import published_image
from tests.integration.test_cli import ducc
from tests.support.images import File, ImageSpec, Layer, push_image
from tests.support.proxy import via
from tests.support.trees import umoci_rootfs

REPO = "unpacked.example.org"
SOURCE = ImageSpec(
    layers=[Layer([File("etc/os-release", b"ID=thin-source\n")]), Layer([File("app", os.urandom(3000))])],
    env=["PATH=/usr/bin:/bin", "APP_MODE=batch"], cmd=["/app", "--run"],
)


def skopeo(*args: str) -> dict:
    done = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def thin_line(stdout: str) -> Reference:
    (line,) = [line for line in stdout.splitlines() if line.startswith("thin\t")]
    return Reference.parse(line.split("\t", 1)[1])


def thin_urls(client, target: Reference) -> list[str]:
    """The layer URLs in the thin.json of the thin image at ``target``, read through ducc's client."""
    import gzip
    import io
    import tarfile

    manifest = client.get_manifest(target)
    (layer,) = manifest.layers
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(client.get_blob(target, layer.digest, 1 << 20)))) as tar:
        member = tar.extractfile("thin.json")
        assert member is not None
        return [entry["url"] for entry in json.loads(member.read())["layers"]]


def published(root, ref: Reference) -> bool:
    return (root / layout.tag_link(ref) / "etc" / "os-release").read_bytes() == b"ID=thin-source\n"


def test_convert_with_thin_pushes_a_thin_image_that_skopeo_and_umoci_read_and_records_it(
    client, unique_ref, registry, proxy, root, tmp_path
):
    source = unique_ref()
    built = push_image(client, source, SOURCE)
    target = via(proxy, Reference(registry.host, source.repository + "_thin", "v1"))
    env = {"DUCC_THIN_CVMFS_REPO": REPO, "DOCKER_CONFIG": str(tmp_path)}
    done = ducc("convert", str(source), "--thin", str(target), root=root, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("published\t") and published(root, source)
    pinned = thin_line(done.stdout)
    assert pinned.with_tag(str(target.tag)) == target and pinned.digest is not None

    direct = Reference(registry.host, target.repository, target.tag)
    seen = skopeo("inspect", "--tls-verify=false", f"docker://{direct}")
    assert seen["Digest"] == str(pinned.digest)
    assert seen["Env"] == ["CVMFS_IMAGE=true", "PATH=/usr/bin:/bin", "APP_MODE=batch"]
    config = skopeo("inspect", "--tls-verify=false", "--config", f"docker://{direct}")
    assert config["config"]["Cmd"] == ["/app", "--run"]
    rootfs = umoci_rootfs(registry.host, target.repository, str(target.tag), tmp_path / "umoci")
    assert sorted(p.name for p in rootfs.iterdir()) == ["thin.json"]
    layers = json.loads((rootfs / "thin.json").read_bytes())["layers"]
    assert layers == [{"digest": d.hex, "url": f"cvmfs://{REPO}/.layers/{d.hex[:2]}/{d.hex}/layerfs"}
                      for d in built.layer_digests]

    info = json.loads(ducc("inspect", str(source), root=root).stdout)
    assert info["thin_reference"] == str(target) and info["thin_digest"] == str(pinned.digest)
    details = json.loads((root / layout.metadata_dir(source, DEFAULT_PLATFORM) / layout.RECORD_DETAILS).read_bytes())
    assert details["thin_reference"] == str(target) and details["thin_digest"] == str(pinned.digest)
    shown = published_image(DirectoryView(root), source, DEFAULT_PLATFORM)  # what GET /api/v1/images answers
    assert shown["thin_reference"] == str(target) and shown["thin_digest"] == str(pinned.digest)

    before = len(proxy.seen)
    again = ducc("convert", str(source), "--thin", str(target), root=root, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("unchanged\t") and thin_line(again.stdout) == pinned
    assert proxy.seen[before:] == []  # the record says the thin image is there: nothing is asked
    forced = ducc("convert", str(source), "--thin", str(target), "--force", root=root, env=env)
    assert forced.returncode == 0, forced.stderr
    assert thin_line(forced.stdout) == pinned  # the same digest, from byte-identical blobs ...
    assert [(s.method, "/manifests/" in s.path) for s in proxy.seen[before:]] == [("HEAD", True)]  # ... one HEAD


def test_sync_pushes_the_thin_images_the_wishlist_names_as_the_recipe_user(
    client, auth_client, unique_ref, auth_registry, root, tmp_path
):
    source = unique_ref("2.0")
    push_image(client, source, SOURCE)
    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text(f"""
version: 1
user: ducc
cvmfs_repo: {REPO}
output_format: '$(scheme)://{auth_registry.host}/thin/$(image)'
input:
  - 'http://{source}'
""")
    env = {"DOCKER_CONFIG": str(tmp_path), "DUCC_OUTPUT_REGISTRY_PASS": "s3cr3t-pw"}  # the wishlist names REPO
    done = ducc("sync", str(wishlist), root=root, env=env)
    assert done.returncode == 0, done.stderr
    target = Reference(auth_registry.host, f"thin/{source.repository}", "2.0")
    seen = skopeo("inspect", "--tls-verify=false", "--creds", "ducc:s3cr3t-pw", f"docker://{target}")
    info = json.loads(ducc("inspect", str(source), root=root).stdout)
    assert info["thin_reference"] == str(target) and Digest.parse(info["thin_digest"]) == Digest.parse(seen["Digest"])
    assert "s3cr3t-pw" not in done.stderr + done.stdout
    urls = thin_urls(auth_client, target)
    assert urls and all(url.startswith(f"cvmfs://{REPO}/.layers/") for url in urls), urls


def test_without_thin_nothing_is_pushed_and_the_record_names_no_thin_image(client, unique_ref, root, tmp_path):
    source = unique_ref()
    push_image(client, source, SOURCE)
    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text(f"version: 1\nuser: ducc\ninput:\n  - '{source}'\n")
    assert ducc("sync", str(wishlist), root=root, env={"DUCC_THIN_CVMFS_REPO": REPO}).returncode == 0
    default_thin = Reference(source.registry, source.repository + "_thin", source.tag)
    assert client.manifest_digest(default_thin) is None
    info = json.loads(ducc("inspect", str(source), root=root).stdout)
    assert info["thin_reference"] is None


def test_a_thin_image_pushed_under_a_new_name_mounts_its_blobs_from_the_earlier_one(
    client, unique_ref, registry, proxy, root, tmp_path
):
    """When the output_format changes, the image is current but its thin image must go to the new name: the
    registry is asked to mount both blobs from the thin image recorded earlier; nothing is uploaded."""
    source = unique_ref()
    push_image(client, source, SOURCE)
    env = {"DUCC_THIN_CVMFS_REPO": REPO, "DOCKER_CONFIG": str(tmp_path)}
    first = via(proxy, Reference(registry.host, source.repository + "_thin", "v1"))
    assert ducc("convert", str(source), "--thin", str(first), root=root, env=env).returncode == 0
    renamed = via(proxy, Reference(registry.host, source.repository + "_thin2", "v1"))
    before = len(proxy.seen)
    done = ducc("convert", str(source), "--thin", str(renamed), root=root, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("unchanged\t")
    sent = [(s.method, s.path) for s in proxy.seen[before:]]
    mounts = [path for method, path in sent if method == "POST" and f"from={first.repository}" in path.replace("%2F", "/")]
    assert len(mounts) == 2, sent  # the thin layer and the config
    assert not [path for method, path in sent if method in ("PATCH", "PUT") and "/blobs/uploads/" in path], sent
    assert skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/{renamed.repository}:v1")["Digest"] \
        == str(thin_line(done.stdout).digest)
    info = json.loads(ducc("inspect", str(source), root=root).stdout)
    assert info["thin_reference"] == str(renamed)


def test_a_thin_image_is_pushed_with_credentials_from_a_docker_config(client, unique_ref, auth_registry, root, tmp_path):
    """No DUCC_OUTPUT_REGISTRY_* settings: the account in Docker's config.json for the thin image's registry
    pushes it (the password never shows in the output)."""
    import base64

    source = unique_ref()
    push_image(client, source, SOURCE)
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps(
        {"auths": {auth_registry.host: {"auth": base64.b64encode(b"ducc:s3cr3t-pw").decode()}}}))
    target = Reference(auth_registry.host, "thin/" + source.repository.rsplit("/", 1)[1], "v1")
    done = ducc("convert", str(source), "--thin", str(target), root=root,
                env={"DUCC_THIN_CVMFS_REPO": REPO, "DOCKER_CONFIG": str(docker)})
    assert done.returncode == 0, done.stderr
    assert "s3cr3t-pw" not in done.stderr + done.stdout
    seen = skopeo("inspect", "--tls-verify=false", "--creds", "ducc:s3cr3t-pw", f"docker://{target}")
    assert seen["Digest"] == str(thin_line(done.stdout).digest)


def test_the_same_image_gives_the_same_thin_image_from_any_root(client, unique_ref, registry, tmp_path):
    """Two fresh directory roots, one DUCC_THIN_CVMFS_REPO: the layer URLs name that repository, never a
    root's own path or generated name, so the thin digest is the same."""
    source = unique_ref()
    built = push_image(client, source, SOURCE)
    pinned = []
    for name in ("first", "second"):
        target = Reference(registry.host, f"{source.repository}_thin_{name}", "v1")
        done = ducc("convert", str(source), "--thin", str(target), root=tmp_path / name,
                    env={"DUCC_THIN_CVMFS_REPO": REPO, "DOCKER_CONFIG": str(tmp_path)})
        assert done.returncode == 0, done.stderr
        pinned.append(thin_line(done.stdout).digest)
        assert thin_urls(client, target) == [f"cvmfs://{REPO}/{layout.layerfs(d)}" for d in built.layer_digests]
    assert pinned[0] == pinned[1]


def test_a_thin_image_no_cvmfs_repository_is_named_for_is_refused_in_one_line_before_any_work(
    client, unique_ref, registry, root, tmp_path
):
    source = unique_ref()
    push_image(client, source, SOURCE)
    target = Reference(registry.host, f"{source.repository}_thin", "v1")
    done = ducc("convert", str(source), "--thin", str(target), root=root,
                env={"DOCKER_CONFIG": str(tmp_path), "DUCC_REPOSITORY": "shared-nfs-export"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"ducc: {source}: a thin image needs the CVMFS repository its layers are read from: "
        "give --cvmfs-repo, the wishlist's cvmfs_repo or DUCC_THIN_CVMFS_REPO"]
    assert not (root / layout.tag_link(source)).exists() and not (root / ".layers").exists()
    assert client.manifest_digest(target) is None
