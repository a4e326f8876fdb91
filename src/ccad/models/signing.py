"""Bundle signatures: a site can refuse a bundle it did not approve.

The bundle card lists the sha256 of every file in the bundle, so an Ed25519 signature of the card's
exact bytes (``ccad-model.json.sig``, base64) covers the whole bundle: a changed model, heatmap weight,
guard, head or card field (a decision threshold) no longer verifies. Keys are standard PEM files; make a
pair with ``ccad keys --out DIR`` or OpenSSL (``openssl genpkey -algorithm ed25519 -out key.pem``,
``openssl pkey -in key.pem -pubout -out key.pub.pem``). Signing and verifying use ``cryptography``.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from ccad.errors import ConfigError, ModelError
from ccad.io.files import write_bytes, write_text

SIGNATURE_FILE = "ccad-model.json.sig"
CARD_FILE = "ccad-model.json"


def make_keys(out: str | os.PathLike) -> tuple[Path, Path]:
    """A new Ed25519 pair: ``out/ccad-signing.key.pem`` (private, mode 0600) and ``out/ccad-signing.pub.pem``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out)
    private, public = out / "ccad-signing.key.pem", out / "ccad-signing.pub.pem"
    if private.exists() or public.exists():
        raise ConfigError(f"{out}: already holds a ccad key pair")
    key = Ed25519PrivateKey.generate()
    write_bytes(
        private,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    private.chmod(0o600)
    write_bytes(
        public,
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    return private, public


def _load(path: str | os.PathLike, private: bool):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    try:
        data = Path(path).read_bytes()
        key = (
            serialization.load_pem_private_key(data, password=None)
            if private
            else serialization.load_pem_public_key(data)
        )
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(
            f"{path}: not a readable PEM {'private' if private else 'public'} key ({type(e).__name__})"
        ) from None
    if not isinstance(key, Ed25519PrivateKey if private else Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 key")
    return key


def sign_bundle(bundle: str | os.PathLike, private_key: str | os.PathLike) -> Path:
    """Sign ``bundle``'s card with ``private_key``; returns the signature file."""
    bundle = Path(bundle)
    signature = _load(private_key, private=True).sign((bundle / CARD_FILE).read_bytes())
    write_text(bundle / SIGNATURE_FILE, base64.b64encode(signature).decode("ascii") + "\n")
    return bundle / SIGNATURE_FILE


def verify_bundle(bundle: str | os.PathLike, public_key: str | os.PathLike) -> None:
    """Raise :class:`ModelError` unless ``bundle``'s card carries a valid signature by ``public_key``'s owner."""
    from cryptography.exceptions import InvalidSignature

    key = _load(public_key, private=False)
    bundle = Path(bundle)
    path = bundle / SIGNATURE_FILE
    if not path.is_file():
        raise ModelError(f"{bundle}: not signed (no {SIGNATURE_FILE}); this site only runs signed bundles")
    try:
        key.verify(base64.b64decode(path.read_text().strip(), validate=True), (bundle / CARD_FILE).read_bytes())
    except (InvalidSignature, ValueError):
        raise ModelError(
            f"{bundle}: the signature does not match the card; the bundle changed after signing, "
            "or another key signed it"
        ) from None
