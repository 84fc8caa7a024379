"""Mutual TLS for gRPC between nodes, keyed by the cluster key (``--encrypt``).

Every node derives the same P-256 key pair from the cluster key (HKDF) and a self-signed
certificate for it. Servers require client certificates, and both sides trust only that
certificate's key, so a connection succeeds only between holders of the cluster key: the
traffic is encrypted and both ends are authenticated, with nothing to distribute but the key
``dkron keygen`` printed. (Raft traffic is protected by the same key through pysyncobj's own
encryption.) Without a key, gRPC is plaintext, which the configuration only allows on loopback
unless ``--insecure-bind`` is given.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from dataclasses import dataclass
from functools import lru_cache

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

#: The name every node's certificate carries; clients verify it instead of a host name.
CLUSTER_NAME = "dkron-cluster"
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class ClusterKeyError(ValueError):
    """The cluster key is not usable."""


@dataclass(frozen=True)
class Identity:
    """This node's gRPC key and certificate, and whom it trusts.

    Key-derived (``--encrypt``): the trust root is the shared certificate itself. From files
    (``--grpc-tls-ca/cert/key``): peers must present a certificate signed by ``ca_pem``; servers
    require one from every client, so a node with a certificate from another CA cannot register.
    """

    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes | None = None
    #: The name clients verify in the server's certificate (None: the host of the address).
    server_name: str | None = CLUSTER_NAME

    @property
    def trust(self) -> bytes:
        return self.ca_pem or self.cert_pem

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)], root_certificates=self.trust, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.trust, private_key=self.key_pem, certificate_chain=self.cert_pem
        )


def identity_from_files(ca: str, cert: str, key: str, server_name: str = "") -> Identity:
    """The ``--grpc-tls-*`` identity (files are read once, at start)."""
    try:
        with open(ca, "rb") as f_ca, open(cert, "rb") as f_cert, open(key, "rb") as f_key:
            ca_pem, cert_pem, key_pem = f_ca.read(), f_cert.read(), f_key.read()
    except OSError as exc:
        raise ClusterKeyError(f"grpc-tls: cannot read {exc.filename}: {exc.strerror}") from None
    try:
        x509.load_pem_x509_certificates(ca_pem)
        x509.load_pem_x509_certificate(cert_pem)
        serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ClusterKeyError(f"grpc-tls: not a usable PEM certificate or unencrypted key: {exc}") from None
    return Identity(key_pem, cert_pem, ca_pem=ca_pem, server_name=server_name or None)


def identity_from_config(config: dict) -> Identity | None:
    """``--grpc-tls-*`` when given (CA-based mTLS), else the ``--encrypt`` key-derived one, else None."""
    if config.get("grpc-tls-ca"):
        return identity_from_files(
            config["grpc-tls-ca"],
            config["grpc-tls-cert"],
            config["grpc-tls-key"],
            config.get("grpc-tls-server-name", ""),
        )
    return identity_for(config["encrypt"]) if config.get("encrypt") else None


def decode_key(key: str) -> bytes:
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise ClusterKeyError("encrypt: the key must be base64, as printed by 'dkron keygen'") from None
    if len(raw) < 16:
        raise ClusterKeyError(f"encrypt: the key must be at least 16 bytes, got {len(raw)}")
    return raw


@lru_cache(maxsize=4)
def identity_for(key: str) -> Identity:
    secret = HKDF(algorithm=hashes.SHA256(), length=48, salt=b"dkron-grpc-mtls-v1", info=b"p256").derive(
        decode_key(key)
    )
    private = ec.derive_private_key(int.from_bytes(secret, "big") % (_P256_ORDER - 1) + 1, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CLUSTER_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(int.from_bytes(secret[:8], "big") or 1)
        .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2999, 1, 1, tzinfo=datetime.UTC))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(CLUSTER_NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        # Deterministic (RFC 6979) so that every node builds a byte-identical certificate: TLS
        # trusts a self-signed peer certificate only if it is exactly the one in its trust store.
        .sign(private, hashes.SHA256(), ecdsa_deterministic=True)
    )
    key_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Identity(key_pem, cert.public_bytes(serialization.Encoding.PEM))
