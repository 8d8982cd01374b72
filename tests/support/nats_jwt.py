"""A NATS operator, its accounts and a user, made with ``nkeys`` alone (no ``nsc``): the
JWTs signed as nats-server checks them, the user's ``.creds`` file and a server config in
operator mode (memory resolver, JetStream).

The JWTs follow nats-io/jwt v2: header ``{"typ":"JWT","alg":"ed25519-nkey"}``, claims
``jti`` (unpadded base32 of the SHA-512/256 of the claims without it, as nats-io/jwt v2
computes it; the server takes it as an id only), ``iat``, ``iss`` (the signer's public
key), ``sub``, ``name`` and ``nats`` (``type``, ``version: 2`` and the claims of the type),
each part base64url without padding, the signature ed25519 over ``header.claims``.

``nkeys`` is imported only when a key is made or used: :func:`require_nkeys` skips
(locally) or fails (``CI=true``) a test when it is missing.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.services import in_ci

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
UNLIMITED = -1

# nkeys' prefix bytes (the first base32 letter of a public key names its role)
ROLES = {"operator": 14 << 3, "account": 0, "user": 20 << 3}


def require_nkeys() -> Any:
    """The ``nkeys`` module; skip (locally) or fail (CI=true) when it is not installed."""
    try:
        return importlib.import_module("nkeys")
    except ImportError as exc:
        reason = (f"nkeys is not installed ({exc}); install it with: "
                  'pip install "nats-py[nkeys]" (or pip install -e ".[all,dev]")')
    if in_ci():
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True, slots=True)
class Key:
    """An nkey: its seed (secret) and public key, both as text."""

    seed: str
    public: str

    def __repr__(self) -> str:  # never show the seed in a test report
        return f"Key(public={self.public!r})"

    def sign(self, data: bytes) -> bytes:
        nkeys = require_nkeys()
        return bytes(nkeys.from_seed(self.seed.encode()).sign(data))


def new_key(role: str) -> Key:
    """A fresh nkey for ``role`` (``operator``, ``account`` or ``user``)."""
    nkeys = require_nkeys()
    seed = nkeys.encode_seed(os.urandom(32), ROLES[role])
    pair = nkeys.from_seed(bytes(seed))
    return Key(seed=bytes(seed).decode(), public=bytes(pair.public_key).decode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(signer: Key, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A JWT of ``subject`` signed by ``signer`` (the issuer) with the ``nats`` claims."""
    claims: dict[str, Any] = {"jti": "", "iat": int(time.time()), "iss": signer.public,
                              "name": name, "sub": subject, "nats": {**nats, "version": 2}}
    unhashed = json.dumps(claims, separators=(",", ":")).encode()
    digest = hashlib.new("sha512_256", unhashed).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    signing_input = (f"{_b64(json.dumps(HEADER, separators=(',', ':')).encode())}."
                     f"{_b64(json.dumps(claims, separators=(',', ':')).encode())}")
    return f"{signing_input}.{_b64(signer.sign(signing_input.encode()))}"


def decode_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT (unverified), to check what a test wrote."""
    part = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


def account_limits(*, jetstream: bool) -> dict[str, Any]:
    """Account limits with everything unlimited; JetStream enabled (unlimited storage,
    streams and consumers) or off (0)."""
    js = UNLIMITED if jetstream else 0
    return {"subs": UNLIMITED, "data": UNLIMITED, "payload": UNLIMITED,
            "imports": UNLIMITED, "exports": UNLIMITED, "wildcards": True,
            "conn": UNLIMITED, "leaf": UNLIMITED,
            "mem_storage": js, "disk_storage": js, "streams": js, "consumer": js}


def creds_text(user_jwt: str, user: Key) -> str:
    """A ``.creds`` file as ``nsc`` writes it: the user JWT and the user's nkey seed."""
    return ("-----BEGIN NATS USER JWT-----\n"
            f"{user_jwt}\n"
            "------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{user.seed}\n"
            "------END USER NKEY SEED------\n\n"
            "*************************************************************\n")


@dataclass(frozen=True, slots=True)
class Account:
    """An account's key and its JWT (signed by the operator)."""

    key: Key
    jwt: str


class Operator:
    """An operator (and its system account) that signs accounts, which sign users."""

    def __init__(self, name: str = "aioc-test-operator") -> None:
        self.key = new_key("operator")
        system_key = new_key("account")
        self.jwt = encode_jwt(self.key, self.key.public, name,
                              {"type": "operator", "system_account": system_key.public})
        self.system = self.account("SYS", jetstream=False, key=system_key)

    def __repr__(self) -> str:
        return f"Operator(public={self.key.public!r})"

    def account(self, name: str, *, jetstream: bool = True, key: Key | None = None) -> Account:
        """A new account signed by this operator (JetStream enabled unless told)."""
        key = key or new_key("account")
        claims = {"type": "account", "limits": account_limits(jetstream=jetstream),
                  "default_permissions": {"pub": {}, "sub": {}}}
        return Account(key, encode_jwt(self.key, key.public, name, claims))

    def server_config(self, *accounts: Account, store_dir: Path | None = None) -> str:
        """A nats-server config in operator mode knowing ``accounts`` (and the system one)
        from a memory resolver, with JetStream storing under ``store_dir`` (None: where
        the command line's ``-sd`` says; nats-server refuses it given twice)."""
        preload = "\n".join(f"  {acc.key.public}: {acc.jwt}"
                            for acc in (self.system, *accounts))
        jetstream = ("jetstream: enabled\n" if store_dir is None
                     else f"jetstream {{\n  store_dir: {json.dumps(str(store_dir))}\n}}\n")
        return (f"operator: {self.jwt}\n"
                f"system_account: {self.system.key.public}\n"
                "resolver: MEMORY\n"
                f"resolver_preload: {{\n{preload}\n}}\n"
                f"{jetstream}")

def user_creds(account: Account, path: Path, name: str = "aioc-test-user") -> Path:
    """Write the ``.creds`` file of a new user of ``account`` to ``path`` (mode 0600)."""
    user = new_key("user")
    claims = {"type": "user", "pub": {}, "sub": {}, "subs": UNLIMITED, "data": UNLIMITED,
              "payload": UNLIMITED}
    token = encode_jwt(account.key, user.public, name, claims)
    path.write_text(creds_text(token, user))
    path.chmod(0o600)
    return path
