"""Secrets the broker must use again later (Slack webhook URLs, bot tokens): encrypted at
rest with Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`).

The key comes from `BROKER_SECRET_KEY` (any string; it is stretched with SHA-256), else from
a key file `secret.key` in the data dir, created on first use with mode 0600 (embedded mode).
In production set `BROKER_SECRET_KEY` on every process (API and workers): a worker without
the API's key cannot decrypt, and says so (`SecretUnavailable`) instead of sending garbage.
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
