"""Settings: the one configuration object, read from `BROKER_*` environment variables.

Built by `get_settings()` and passed down; nothing else reads `os.environ`. Nested
sections use `__`: `BROKER_REPLAY__PATH=...`.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """Where the embedded SQLite file lives: `$XDG_DATA_HOME/gpu-broker` or ~/.local/share."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "gpu-broker"


class ReplaySettings(BaseModel):
    """The replay provider: plays recorded market snapshots as successive polls."""

    #: A snapshot folder, or a folder of dated snapshot folders; None = the bundled sample.
    path: Path | None = None
    #: Each poll of the replay provider plays the snapshot of the current time step, so a
    #: running broker sees the sample market move: step i = (now // step_s) % n_snapshots.
    step_s: int = Field(default=300, gt=0)
    #: None = enabled exactly when no real cloud adapter is configured.
    enabled: bool | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BROKER_", env_nested_delimiter="__", extra="ignore"
    )

    #: SQLAlchemy URL. Default: SQLite file in the data dir. PostgreSQL:
    #: `postgresql+psycopg://user@host:5432/db` (`postgres://` and `postgresql://` are accepted).
    database_url: str = ""
    data_dir: Path = Field(default_factory=default_data_dir)
    #: An offer not seen by a successful poll of its scope for this long is stale: shown only
    #: with --include-stale. Must exceed the longest poll interval.
    stale_after_minutes: int = Field(default=120, gt=0)
    replay: ReplaySettings = Field(default_factory=ReplaySettings)
    log_level: str = "WARNING"

    @field_validator("database_url")
    @classmethod
    def _normalise_driver(cls, v: str) -> str:
        for prefix in ("postgres://", "postgresql://"):
            if v.startswith(prefix):
                return "postgresql+psycopg://" + v[len(prefix) :]
        return v

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'broker.db'}"


def get_settings() -> Settings:
    return Settings()
