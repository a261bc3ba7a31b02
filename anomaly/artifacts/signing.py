"""Signed bundles: who made a model, not only that its files are intact.

A bundle's checksums (:mod:`anomaly.artifacts.bundle`) catch corruption and accidental edits,
but anyone who edits a threshold can recompute them. A signature cannot be recomputed without
the private key: ``anomaly keygen`` makes an Ed25519 key pair (the ``cryptography`` package),
``anomaly sign`` signs a bundle's ``metadata.json`` (which holds the SHA-256 of every other
file, so the signature covers the whole bundle) into ``signature.json``, and a line PC that
scores with ``--require-signature PUBLIC_KEY`` refuses bundles that are unsigned, signed with
another key, or changed after signing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from anomaly.errors import BundleError, ConfigError
from anomaly.io.files import write_bytes_atomic, write_text_atomic

#: The signature file inside a bundle (not listed in the metadata it signs).
SIGNATURE = "signature.json"
METADATA = "metadata.json"


def generate_key(private_path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 private key (PEM, readable by its owner only) to ``private_path``
    and its public key to ``<private_path>.pub``; returns both paths.

    Raises:
        ConfigError: ``private_path`` exists already (a key is never overwritten).
    """
    private_path = Path(private_path)
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path}: exists already; a key is never overwritten")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_bytes_atomic(private_path, private_pem, mode=0o600)
    write_bytes_atomic(public_path, _public_pem(key.public_key()))
    return private_path, public_path


def write_signature(bundle: str | Path, private_key: str | Path) -> Path:
    """Sign the bundle at ``bundle`` with ``private_key``; returns the signature file.

    A signature of an earlier version of the bundle is replaced. Verify the bundle first
    (:func:`anomaly.artifacts.bundle.sign_bundle` does): a signature vouches for its files.
    """
    bundle = Path(bundle)
    key = _load_private(Path(private_key))
    message = (bundle / METADATA).read_bytes()
    public = key.public_key()
    record = {
        "algorithm": "ed25519",
        "key_id": key_id(public),
        "public_key": _public_pem(public).decode(),
        "signature": key.sign(message).hex(),
    }
    return write_text_atomic(bundle / SIGNATURE, json.dumps(record, indent=2) + "\n")


def verify_bundle(bundle: str | Path, public_key: str | Path) -> str:
    """Check that ``bundle`` was signed with the private half of ``public_key`` and has not
    changed since; returns the key id.

    Raises:
        BundleError: unsigned, signed with another key, or changed after signing.
        ConfigError: ``public_key`` is not an Ed25519 public key file.
    """
    bundle = Path(bundle)
    expected = _load_public(Path(public_key))
    path = bundle / SIGNATURE
    if not path.is_file():
        raise BundleError(
            f"{bundle}: not signed, and a signature is required (sign it with `anomaly sign "
            f"--model {bundle} --key PRIVATE_KEY`)"
        )
    try:
        record = json.loads(path.read_text())
        signature = bytes.fromhex(record["signature"])
        signer = serialization.load_pem_public_key(record["public_key"].encode())
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BundleError(f"{path}: not a readable signature ({error})") from error
    if _public_pem(signer) != _public_pem(expected):
        raise BundleError(
            f"{path}: signed with key {key_id(signer)}, not with the required key "
            f"{key_id(expected)} ({public_key})"
        )
    try:
        expected.verify(signature, (bundle / METADATA).read_bytes())
    except InvalidSignature:
        raise BundleError(
            f"{bundle}: changed after it was signed (the signature does not match its "
            f"{METADATA}); refusing it"
        ) from None
    return key_id(expected)


def key_id(public: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key, to name it in messages."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(f"{path}: not a readable private key ({error})") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key (make one with `anomaly keygen`)")
    return key


def _load_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(f"{path}: not a readable public key ({error})") from error
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 public key (its .pub from `anomaly keygen`)")
    return key
