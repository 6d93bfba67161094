"""The node's TLS identity (a self-signed P-256 certificate pinned by its
fingerprint in the node's signed record) and the certificate fetch before pinning.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smegmesh.daemon.rpc_common import TLS_NAME, RpcError

#: What to do about a damaged pair (see ``TlsIdentity.load_or_create``).
_RENEW = (
    "move tls.key and tls.crt away to make a new pair at the next start (the node's "
    "record then carries the new fingerprint; invitations this node issued before "
    "name the old one and fail through it)"
)


class TlsIdentityError(OSError):
    """``tls.key`` or ``tls.crt`` in the state directory cannot be used (the message names it)."""


def check_pair(key_path: Path, key_pem: bytes, cert_path: Path, cert_pem: bytes) -> None:
    """Both parse, and the certificate is the key's: else :class:`TlsIdentityError`."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise TlsIdentityError(f"{key_path}: not a PEM private key (damaged?); {_RENEW}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise TlsIdentityError(f"{cert_path}: not a PEM certificate (damaged?); {_RENEW}") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise TlsIdentityError(f"{cert_path}: not the certificate of {key_path.name}; {_RENEW}")


@dataclass(frozen=True)
class TlsIdentity:
    key_pem: bytes
    cert_pem: bytes

    @property
    def fingerprint(self) -> bytes:
        return cert_fingerprint(self.cert_pem)

    @classmethod
    def generate(cls) -> TlsIdentity:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TLS_NAME)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
            .not_valid_after(datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(TLS_NAME)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        )

    @classmethod
    def load_or_create(cls, directory: Path) -> TlsIdentity:
        """The pair in ``directory``, checked, or a new one if either file is missing.

        A damaged pair is not replaced: its fingerprint is pinned by other
        nodes and named in the invitations this node issued, so a new one is
        the operator's choice (:class:`TlsIdentityError` says how).
        """
        key_path, cert_path = directory / "tls.key", directory / "tls.crt"
        if key_path.exists() and cert_path.exists():
            key_pem, cert_pem = key_path.read_bytes(), cert_path.read_bytes()
            check_pair(key_path, key_pem, cert_path, cert_pem)
            return cls(key_pem=key_pem, cert_pem=cert_pem)
        ident = cls.generate()
        from smegmesh.daemon.persist import atomic_write

        atomic_write(key_path, ident.key_pem, mode=0o600)
        atomic_write(cert_path, ident.cert_pem, mode=0o644)
        return ident


def cert_fingerprint(cert_pem_or_der: bytes) -> bytes:
    if cert_pem_or_der.lstrip().startswith(b"-----"):
        der = x509.load_pem_x509_certificate(cert_pem_or_der).public_bytes(
            serialization.Encoding.DER
        )
    else:
        der = cert_pem_or_der
    return hashlib.sha256(der).digest()


async def fetch_certificate(
    host: str, port: int, timeout: float, wire: list[int] | None = None
) -> bytes:
    """Fetch the server's certificate (DER) with a plain TLS handshake.

    ``wire``: ``[sent, received]`` TCP payload bytes of the connection are added
    to it (the connection is closed before any sampler could see it).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # verified by fingerprint right below, by the caller
    ctx.set_alpn_protocols(["h2"])
    _reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ctx, server_hostname=TLS_NAME), timeout
    )
    try:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj else None
        if not der:
            raise RpcError(f"{host}:{port} presented no certificate")
        return bytes(der)
    finally:
        if wire is not None:
            from smegmesh.daemon.wirestats import socket_bytes

            sent, received = socket_bytes(writer.get_extra_info("socket"))
            wire[0] += sent
            wire[1] += received
        # No graceful TLS shutdown: a gRPC server need not answer close_notify,
        # and waiting for it stalls every first call to a node for asyncio's
        # ssl_shutdown_timeout (30 s). We only wanted the certificate.
        writer.transport.abort()
        # The socket is closed on the loop's next turn: let it, so that the
        # channel opened next does not overlap it (the pool's cap counts the
        # fetch as the connection it becomes; under load a sampler saw cap + 1)
        await asyncio.sleep(0)
