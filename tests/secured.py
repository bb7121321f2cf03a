"""A secure broker for the security tests: ``splitmq secure`` files, TLS, the dynamic
security plugin. Module-scoped: each test module gets its own broker and users."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from splitmq.broker.launcher import Broker
from splitmq.broker.secure import SecureDir
from splitmq.shared.protocol.topics import Topics

#: ME attacks, OTHER is the victim device, CAM a victim camera; RUNNER runs a real device
#: where ME and OTHER hold their one connection each (a device may connect only once, as
#: its id).
ME, OTHER, CAM, RUNNER = "dev-a", "dev-b", "cam-c", "dev-run"
DEVICES = (ME, OTHER, CAM, RUNNER)
#: A site whose bridge logs in to this broker as the cloud's (docs/operations.md, sites).
SITE, OTHER_SITE = "north", "south"
T = Topics()


@pytest.fixture(scope="module")
def secure_dir(tmp_path_factory: pytest.TempPathFactory) -> SecureDir:
    made = SecureDir.init(tmp_path_factory.mktemp("secure"), devices=list(DEVICES))
    made.add_site(SITE)
    made.add_site(OTHER_SITE)
    return made


@pytest.fixture(scope="module")
def secure_broker(secure_dir: SecureDir) -> Iterator[Broker]:
    with Broker(secure=secure_dir.root) as running:
        yield running
