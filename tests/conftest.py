from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from support.services import MQTT_URL, NATS_URL, POSTGRES_DSN, REDIS_URL, require_server


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """DSN of the real test PostgreSQL (skip locally / fail under CI=true if unreachable)."""
    require_server("PostgreSQL", POSTGRES_DSN, 5432)
    return POSTGRES_DSN


@pytest.fixture(scope="session")
def mqtt_url() -> str:
    """URL of the real test Mosquitto (skip locally / fail under CI=true if unreachable)."""
    require_server("Mosquitto", MQTT_URL, 1883)
    return MQTT_URL


@pytest.fixture(scope="session")
def nats_url() -> str:
    """URL of the real test NATS server with JetStream (skip locally / fail under CI=true
    if unreachable)."""
    require_server("NATS", NATS_URL, 4222)
    return NATS_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real test Redis (skip locally / fail under CI=true if unreachable)."""
    require_server("Redis", REDIS_URL, 6379)
    return REDIS_URL


@pytest.fixture
async def db(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """The test's own connection to the real PostgreSQL (never through a proxy, never killed)."""
    conn = await asyncpg.connect(postgres_dsn)
    try:
        yield conn
    finally:
        await conn.close()
