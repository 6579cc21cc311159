from __future__ import annotations

from pathlib import Path

import pytest

from ducc.convert import Converter
from ducc.publish.directory import DirectoryPublisher
from ducc.registry.client import RegistryClient


@pytest.fixture
def converter(client: RegistryClient, root: Path) -> Converter:
    return Converter(client, DirectoryPublisher(root))
