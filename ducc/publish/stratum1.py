"""How far a new revision has propagated: the revision each stratum 1 serves, from its ``.cvmfspublished``.

A stratum 1 (and the stratum 0's own web server) serves the repository manifest at
``http://<host>/cvmfs/<repo>/.cvmfspublished``; its ``S`` line is the revision it replicates now.
``DUCC_STRATUM1_URLS`` entries are either that base (``http://host/cvmfs/<repo>``) or just the
server (``http://host[:port]``), to which ``/cvmfs/<repo>`` is added.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import requests

from ducc.publish.cvmfs_server import parse_revision


def manifest_url(base: str, repository: str) -> str:
    base = base.rstrip("/")
    if not base.endswith(f"/cvmfs/{repository}"):
        base += f"/cvmfs/{repository}"
    return f"{base}/.cvmfspublished"


def host_of(url: str) -> str:
    return urlsplit(url).netloc or url


def served_revision(url: str, *, timeout: float = 10.0, session: requests.Session | None = None) -> int | None:
    """The revision the manifest at ``url`` names; None if the server cannot be reached or says nothing usable."""
    try:
        response = (session or requests).get(url, timeout=timeout, headers={"Cache-Control": "no-cache"})
    except requests.RequestException:
        return None
    if response.status_code != 200:
        return None
    return parse_revision(response.content)
