import os
from typing import AsyncIterator

import pytest

from hypothesis import HealthCheck, settings

from threadline.server import RunningServer
from tests.pg import Cluster
from tests.servers import serving

# Property tests run a whole runtime per example: bound them in count, never in wall time
# (this machine is shared and noisy; speed is measured by bench/, not by tests).
settings.register_profile(
    "threadline", max_examples=int(os.environ.get("THREADLINE_EXAMPLES", "60")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("threadline")


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with serving() as s:
        yield s


@pytest.fixture
async def scripted_server() -> AsyncIterator[RunningServer]:
    async with serving(scripted=True) as s:
        yield s


@pytest.fixture(scope="session")
def pg_cluster():
    """One PostgreSQL cluster for the whole run (never skipped: it fails if it cannot start)."""
    cluster = Cluster().init()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_dsn(pg_cluster) -> str:
    """A DSN to an empty database."""
    return pg_cluster.reset()
