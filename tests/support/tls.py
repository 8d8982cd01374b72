"""Throw-away TLS certificates for tests: a private CA per test, made with trustme.

    tls = make_tls(tmp_path)                      # CA + a certificate for 127.0.0.1
    Mosquitto(tmp_path, extra_config=tls.mosquitto_listener_config())
    client_context = tls.client_context()         # trusts this CA, and nothing else

Nothing is read from fixed system paths: the CA lives only as long as the test.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .services import in_ci

if TYPE_CHECKING:
    import trustme


def require_trustme() -> None:
    """Skip (locally) or fail (CI=true) when trustme, a dev extra, is not installed."""
    try:
        import trustme  # noqa: F401
    except ImportError:
        reason = 'trustme is not installed (pip install -e ".[dev]")'
        if in_ci():
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)


@dataclass(frozen=True)
class TlsFiles:
    """A CA and one server certificate (with its key), as PEM files in ``workdir``."""

    ca: trustme.CA
    cafile: Path
    certfile: Path
    keyfile: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that verifies the server against this CA only."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.load_verify_locations(cafile=str(self.cafile))
        return context

    def mosquitto_listener_config(self) -> str:
        """Lines that turn the preceding mosquitto ``listener`` into a TLS listener."""
        return f"cafile {self.cafile}\ncertfile {self.certfile}\nkeyfile {self.keyfile}\n"


def make_tls(workdir: Path, *hosts: str) -> TlsFiles:
    """A fresh CA and a server certificate for ``hosts`` (default: 127.0.0.1, localhost)."""
    require_trustme()
    import trustme

    ca = trustme.CA(organization_name="aioconveyor tests")
    server = ca.issue_cert(*(hosts or ("127.0.0.1", "localhost")))
    folder = Path(workdir) / "tls"
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(ca, folder / "ca.pem", folder / "server.pem", folder / "server.key")
    ca.cert_pem.write_to_path(str(files.cafile))
    files.certfile.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(files.keyfile))
    files.keyfile.chmod(0o600)
    return files
