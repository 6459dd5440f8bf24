"""Test helpers shared by the platform adapters' tests."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from adapters.base import Observer


@dataclass
class RecordingObserver(Observer):
    """Remembers every hook call."""

    frames: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    requests: list[tuple[str, dict[str, Any], dict[str, Any] | None, str]] = field(default_factory=list)
    reconnects: int = 0
    links: list[tuple[bool, str]] = field(default_factory=list)
    unmapped: list[tuple[str, str]] = field(default_factory=list)

    def frame(self, kind: str) -> None:
        self.frames.append(kind)

    def bad_frame(self, reason: str, sample: str) -> None:
        self.bad.append((reason, sample))

    def raw_frame(self, text: str, at: float) -> None:
        self.raw.append(text)

    def pbx_request(
        self,
        endpoint: str,
        body: dict[str, Any],
        answer: dict[str, Any] | None,
        result: str,
        seconds: float,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.requests.append((endpoint, body, answer, result))

    def unmapped_state(self, state: str, personality: str) -> None:
        self.unmapped.append((state, personality))

    def reconnect(self) -> None:
        self.reconnects += 1

    def link(self, connected: bool, detail: str) -> None:
        self.links.append((connected, detail))

    def bad_reasons(self) -> list[str]:
        return [reason for reason, _ in self.bad]


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_certs(d: Path) -> dict[str, str]:
    """A throwaway CA (``ca``) and a server certificate for 127.0.0.1 (``server`` + ``key``) in ``d``."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("xferd test CA", ca_key, "xferd test CA", ca_key, ca=True)
    server = _cert("127.0.0.1", server_key, "xferd test CA", ca_key, ca=False)
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return {name: str(d / f"{name}.pem") for name in ("ca", "server")} | {"key": str(d / "server.key")}
