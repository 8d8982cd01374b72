"""NatsConsumer(credentials=...) against a private nats-server in operator (JWT) mode.

The operator, its accounts and users are made by tests/support/nats_jwt.py with ``nkeys``
alone; the server knows the accounts from a memory resolver and runs JetStream.

* a ``.creds`` login publishes records into a JetStream stream of its account (counted by
  a nats-py client logged in with the same file);
* a user of an account the server does not know is refused (``NatsConnectionError`` with
  ``refused``), and neither its seed nor its JWT shows in the error, the repr or the log.

Without ``nkeys`` these tests skip locally and fail under ``CI=true``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from test_nats import meter, private_server

from aioconveyor import AioConveyor, Consumer
from aioconveyor.consumers import NatsConsumer
from aioconveyor.consumers.nats import NatsConnectionError, NatsStream
from support.nats_jwt import Account, Operator, decode_claims, require_nkeys, user_creds


@pytest.fixture(autouse=True)
def nkeys_installed() -> None:
    require_nkeys()


@pytest.fixture
def operator() -> Operator:
    return Operator()


@pytest.fixture
def app(operator: Operator) -> Account:
    """The account (JetStream enabled) the private server knows."""
    return operator.account("APP")


@pytest.fixture
def url(tmp_path: Path, operator: Operator, app: Account) -> Iterator[str]:
    """The URL of a private nats-server trusting ``operator`` and knowing ``app``."""
    conf = tmp_path / "operator.conf"
    conf.write_text(operator.server_config(app))  # private_server gives -js -sd
    with private_server(tmp_path, "-c", str(conf)) as (port, _):
        yield f"nats://127.0.0.1:{port}"


def creds_secrets(path: Path) -> list[str]:
    """The user JWT and the seed written in a ``.creds`` file."""
    lines = path.read_text().splitlines()
    return [lines[lines.index("-----BEGIN NATS USER JWT-----") + 1],
            lines[lines.index("-----BEGIN USER NKEY SEED-----") + 1]]


def test_the_jwts_chain_operator_account_user(operator: Operator, tmp_path: Path) -> None:
    account = operator.account("APP")
    user_jwt, seed = creds_secrets(user_creds(account, tmp_path / "u.creds"))
    op, acc, user = (decode_claims(t) for t in (operator.jwt, account.jwt, user_jwt))
    assert op["iss"] == op["sub"] == operator.key.public and op["nats"]["type"] == "operator"
    assert acc["iss"] == operator.key.public and acc["sub"] == account.key.public
    assert acc["nats"]["limits"]["disk_storage"] == -1 and acc["nats"]["version"] == 2
    assert user["iss"] == account.key.public and user["nats"]["type"] == "user"
    assert seed.startswith("SU") and user["sub"].startswith("U")
    assert account.key.seed not in repr(account) and operator.key.seed not in repr(operator)


async def test_a_creds_login_publishes_into_a_jetstream_stream(
    url: str, app: Account, tmp_path: Path,
) -> None:
    creds = user_creds(app, tmp_path / "app.creds")
    spec = NatsStream("CREDS", subjects=["creds.>"])
    sink = NatsConsumer(url, "creds.{producer}", credentials=creds, stream=spec)
    conv = AioConveyor(meter, [Consumer(sink, batch_size=2, batch_age=60)],
                       loop_interval=0.02, max_ticks=5, stop_timeout=10)
    await conv.run()
    assert conv.stats().consumer("nats").delivered == 5
    nc = await nats.connect(url, user_credentials=str(creds))
    try:
        js = nc.jetstream()
        info = await js.stream_info("CREDS")
        assert info.state.messages == 5
        last = await js.get_msg("CREDS", info.state.last_seq)
        assert last.subject == "creds.meter" and last.data is not None
        assert json.loads(last.data)["power_w"] == 1200.5
    finally:
        await nc.close()


@pytest.mark.parametrize("signer", ["the operator", "another operator"])
async def test_a_user_of_an_unknown_account_is_refused_without_showing_its_secrets(
    url: str, operator: Operator, signer: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    issuer = operator if signer == "the operator" else Operator("stranger-operator")
    stranger = issuer.account("STRANGER")  # never preloaded: the server does not know it
    creds = user_creds(stranger, tmp_path / "stranger.creds")
    sink = NatsConsumer(url, "creds.x", credentials=creds, timeout=2)
    with pytest.raises(NatsConnectionError) as info:
        await sink.open()
    assert info.value.refused, info.value
    assert "refused the login" in str(info.value)
    shown = [str(info.value), repr(info.value), repr(sink), caplog.text]
    for secret in creds_secrets(creds):
        for text in shown:
            assert secret not in text
