"""Secrets the broker must use again later (Slack webhook URLs, bot tokens): encrypted at
rest with Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`).

The key comes from `BROKER_SECRET_KEY` (any string; it is stretched with SHA-256), else from
a key file `secret.key` in the data dir, created on first use with mode 0600 (embedded mode).
In production set `BROKER_SECRET_KEY` on every process (API and workers): a worker without
the API's key cannot decrypt, and says so (`SecretUnavailable`) instead of sending garbage.
Production mode (`BROKER_REDIS_URL` set; `broker worker`, `broker scheduler`,
`broker serve --no-embedded-workers`) refuses to start without one, or with a key published
anywhere (the old docker-compose.yml fallback), which would let anyone holding a copy of the
database read the stored Slack secrets: `check_production_key`.
API keys are not here: they are only ever compared, so they are stored hashed (`broker.auth`).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from broker.config import Settings


class SecretUnavailable(RuntimeError):
    """A stored secret cannot be decrypted with this process's key."""


class SecretKeyRequired(ValueError):
    """Production mode without a usable `BROKER_SECRET_KEY`; the message says how to set one."""


#: Keys that were published (docker-compose.yml's fallback until issue 16): never secret.
PUBLISHED_KEYS = frozenset({"change-me-in-dot-env"})
#: How to make a key (any string works; a Fernet key is 32 random bytes, base64).
GENERATE_KEY = (
    'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
)


def check_production_key(settings: Settings) -> None:
    """Refuse production mode without a secret key of its own.

    Raises:
        SecretKeyRequired: `BROKER_SECRET_KEY` unset, blank, or a published value.
    """
    key = settings.secret_key.get_secret_value().strip() if settings.secret_key else ""
    if key and key not in PUBLISHED_KEYS:
        return
    why = "is not set" if not key else "is the published placeholder of docker-compose.yml"
    raise SecretKeyRequired(
        f"BROKER_SECRET_KEY {why}: production mode stores Slack webhook URLs and tokens "
        "encrypted with it, and every API, worker and scheduler process needs the same one. "
        f"Make one with `{GENERATE_KEY}` and set it on every process (e.g. "
        "BROKER_SECRET_KEY=... in .env for docker compose)."
    )


def _fernet_key(material: str) -> bytes:
    return base64.urlsafe_b64encode(hashlib.sha256(material.encode()).digest())


def _key_file(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    material = base64.urlsafe_b64encode(os.urandom(32)).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, material.encode())
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return material


class SecretBox:
    """Encrypts and decrypts short secrets with the configured key."""

    def __init__(self, settings: Settings) -> None:
        if settings.secret_key is not None:
            material = settings.secret_key.get_secret_value()
        else:
            path = settings.data_dir / "secret.key"
            try:
                material = _key_file(path)
            except FileExistsError:  # another process created it between our read and write
                material = path.read_text().strip()
        self._fernet = Fernet(_fernet_key(material))

    def seal(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise SecretUnavailable(
                "a stored Slack secret cannot be decrypted: BROKER_SECRET_KEY differs from "
                "the one it was stored with"
            ) from None
