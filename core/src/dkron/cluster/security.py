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
    key_pem: bytes
    cert_pem: bytes

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)], root_certificates=self.cert_pem, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.cert_pem, private_key=self.key_pem, certificate_chain=self.cert_pem
        )


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
