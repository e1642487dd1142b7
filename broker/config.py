"""Settings: the one configuration object, read from `BROKER_*` environment variables.

Built by `get_settings()` and passed down; nothing else reads `os.environ`. Nested
sections use `__`: `BROKER_REPLAY__PATH=...`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


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
    #: Seconds between two scheduled polls of the replay; None = `BROKER_POLL_INTERVAL_S`.
    poll_interval_s: int | None = Field(default=None, gt=0)


def _split_list(value: Any) -> Any:
    """`a,b,c` or a JSON list → list; empty string → None (= the provider's default)."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


#: A list setting read from the environment as `a,b,c` (or a JSON list).
CsvList = Annotated[list[str] | None, NoDecode]


class ClientSettings(BaseModel):
    """What every adapter's client shares: timeouts, retries, concurrency.

    Retries are the adapter's own (bounded): a 429 is retried after its Retry-After when
    that is at most `max_retry_after_s`, otherwise the scope fails as `rate_limited` and the
    next poll tries again. The SDKs' own retry loops are turned down to `max_attempts`.
    """

    timeout_s: float = Field(default=20.0, gt=0)
    #: Seconds between two scheduled polls of this provider; None = `BROKER_POLL_INTERVAL_S`.
    poll_interval_s: int | None = Field(default=None, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=10)
    max_retry_after_s: float = Field(default=30.0, ge=0)
    #: Regions (or other scopes) polled at once.
    max_concurrency: int = Field(default=8, ge=1, le=64)
    #: Serve every request from `<replay_dir>/<provider>.jsonl`, a recording made by
    #: `broker poll --record`, instead of the network (docs/recording.md).
    replay_dir: Path | None = None


class AwsSettings(ClientSettings):
    """AWS through boto3's standard credential chain (env, profile, SSO, instance role).

    `AWS_ENDPOINT_URL` (boto3's own variable) points every client at one endpoint, e.g. a
    moto server. The adapter is disabled when boto3 finds no credentials.
    """

    #: Regions to poll; None = every region enabled for the account (`describe_regions`).
    regions: CsvList = None
    #: A profile of ~/.aws/config; None = the default chain.
    profile: str | None = None
    #: The Pricing API lives in a few regions only; us-east-1 serves every region's prices.
    pricing_region: str = "us-east-1"
    #: Poll EC2 Capacity Blocks for ML offerings (one call per type and region).
    capacity_blocks: bool = True
    #: Block lengths searched, in hours (AWS: 24-hour steps up to 14 days, then 7-day steps);
    #: one DescribeCapacityBlockOfferings call per length, type and region.
    capacity_block_hours: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [24], min_length=1
    )
    #: Instances per block searched (AWS: 1-64); offerings are for exactly this many.
    capacity_block_instance_count: int = Field(default=1, ge=1, le=64)
    #: `instance-type` filter of DescribeInstanceTypes: the accelerated families. Types
    #: without GPU/Neuron/inference/FPGA devices are dropped client-side anyway; empty =
    #: read every type (about ten times the pages).
    instance_type_patterns: CsvList = Field(
        default_factory=lambda: ["dl*", "f*", "g*", "inf*", "p*", "trn*"]
    )
    #: Read the account's vCPU quotas of the accelerated families (Service Quotas).
    quotas: bool = True
    #: Regions polled at once. EC2 throttles per region, so regions do not compete.
    max_concurrency: int = Field(default=16, ge=1, le=64)

    _split = field_validator(
        "regions", "instance_type_patterns", "capacity_block_hours", mode="before"
    )(_split_list)


class GcpSettings(ClientSettings):
    """GCP through Application Default Credentials (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud
    ADC or the metadata server). Disabled without a project."""

    project: str | None = None
    #: Regions to poll (their zones); None = every region.
    regions: CsvList = None
    #: Compute API endpoint override (tests point it at a local fake).
    api_endpoint: str | None = None
    #: Cloud Billing Catalog endpoint override and optional API key for it.
    billing_endpoint: str | None = None
    billing_api_key: SecretStr | None = None
    #: `filter` of machineTypes.aggregatedList (RE2 on the name): the accelerator-optimised
    #: families (a2, a3, a4, g2, ...). Empty = every machine type (many more pages).
    machine_type_filter: str = 'name eq "(a[0-9]+[a-z]*|g[0-9]+)-.*"'
    #: Also offer the N1-attachable GPUs (T4, V100, P100, P4), priced per GPU with the host
    #: NOT included: off by default, so every GCP price is a whole machine's, comparable
    #: with other clouds'.
    attachable_gpus: bool = False

    _split = field_validator("regions", mode="before")(_split_list)


class AzureSettings(ClientSettings):
    """Azure through `DefaultAzureCredential` (env `AZURE_CLIENT_ID`/`AZURE_TENANT_ID`/
    `AZURE_CLIENT_SECRET`, managed identity, `az login`). Disabled without a subscription."""

    subscription_id: str | None = None
    #: Locations to poll (`eastus`, `westeurope`...); None = every location with GPU SKUs.
    regions: CsvList = None
    #: ARM endpoint override (sovereign clouds; tests point it at a local fake).
    base_url: str | None = None
    #: The public, unauthenticated Retail Prices API.
    retail_prices_url: str = "https://prices.azure.com/api/retail/prices"
    #: A location's complete price list is reused for this long (prices change rarely, and
    #: one location's VM meters are several MB); 0 = read every poll. SKUs and quotas are
    #: read every poll regardless.
    prices_ttl_s: float = Field(default=3600.0, ge=0)

    _split = field_validator("regions", mode="before")(_split_list)


class ApiKeySettings(ClientSettings):
    """A neocloud reached over HTTPS with one API key; disabled without the key."""

    api_key: SecretStr | None = None
    base_url: str = ""


class LambdaCloudSettings(ApiKeySettings):
    #: The server of Lambda's OpenAPI spec (1.8.3); cloud.lambdalabs.com is its deprecated
    #: secondary server.
    base_url: str = "https://cloud.lambda.ai/api/v1"


class RunpodSettings(ApiKeySettings):
    base_url: str = "https://api.runpod.io"
    #: Places to poll: data centre ids (secure cloud, `EU-RO-1`) and two-letter country codes
    #: (community cloud, `SE`); None = every listed data centre and country the API names.
    data_centers: CsvList = None
    #: Only hosts with at least this CUDA version (`12.4`), sent as `minCudaVersion`.
    min_cuda_version: str | None = Field(default=None, pattern=r"^\d{1,2}\.\d{1,2}$")

    _split = field_validator("data_centers", mode="before")(_split_list)


class VastSettings(ApiKeySettings):
    base_url: str = "https://console.vast.ai/api/v0"


class VerdaSettings(ClientSettings):
    """Verda (formerly DataCrunch): OAuth2 client credentials; disabled without them."""

    client_id: str | None = None
    client_secret: SecretStr | None = None
    base_url: str = "https://api.verda.com/v1"


class ScoringSettings(BaseModel):
    """Knobs of the time-to-power and cost model (see `broker.scoring`, README "Scoring")."""

    #: Hours from launch to running work, per provider (`{"aws": 0.25, ...}` as JSON).
    provisioning_hours: dict[str, float] = Field(
        default_factory=lambda: {
            "aws": 0.25,
            "gcp": 0.25,
            "azure": 0.5,
            "lambda_cloud": 0.25,
            "runpod": 0.1,
            "vast": 0.25,
            "verda": 0.25,
        }
    )
    default_provisioning_hours: float = Field(default=0.5, ge=0)
    unverified_capacity_hours: float = Field(default=4.0, ge=0)
    quota_lead_hours: float = Field(default=72.0, ge=0)
    spot_interruption_overhead: float = Field(default=0.15, ge=0)


class RiskSettings(BaseModel):
    """Thresholds of the commitment risk model (`broker.risk`, README "Commitment risk").

    Shares are fractions (0.5 = 50 %). Every flag a report raises names the threshold it
    crossed, so a reader can tell a setting from a finding.
    """

    #: Flag a provider holding more than this share of the remaining committed spend (or of
    #: the remaining committed GPU-hours) of the live book.
    max_provider_share: float = Field(default=0.5, gt=0, le=1)
    #: Flag a jurisdiction (EU, US, ...) holding more than this share, likewise: a change of
    #: law or an outage there hits that much of the book.
    max_jurisdiction_share: float = Field(default=0.75, gt=0, le=1)
    #: Flag a week in which more than this share of the GPUs live at the start of the week
    #: expire with no commitment of the same GPU family starting that week to replace them.
    expiry_cliff_share: float = Field(default=0.25, gt=0, le=1)
    #: Weeks ahead of `as_of` the expiry-cliff table covers.
    expiry_weeks: int = Field(default=26, ge=1, le=260)
    #: Flag a commitment (and the book) whose reported GPU-hours used are below this share
    #: of the GPU-hours committed over the reported periods.
    utilisation_floor: float = Field(default=0.6, ge=0, le=1)
    #: A running commitment with no usage reported this long after its start is flagged
    #: ("no usage reported"); before that, missing usage is not yet a finding.
    usage_grace_hours: int = Field(default=168, ge=0)
    #: Flag a commitment whose rate exceeds today's best comparable live offer by more than
    #: this share (0.05: more than 5 % over the market).
    overpayment_tolerance: float = Field(default=0.05, ge=0)


class AlertSettings(BaseModel):
    """Slack alerts (`broker.alerts`): matching, message building and delivery."""

    #: An offer already alerted alerts again when its price falls at least this share below
    #: the price of that alert (a subscription may set its own).
    price_drop_pct: float = Field(default=0.05, gt=0, le=1)
    #: Offers listed in one message; the rest are counted ("and 12 more").
    max_offers_per_message: int = Field(default=10, ge=1, le=40)
    #: Seconds one Slack call may take.
    send_timeout_s: float = Field(default=10.0, gt=0)
    #: Attempts per delivery before it is marked failed (429s and 5xx are retried).
    max_attempts: int = Field(default=8, ge=1, le=50)
    #: Backoff of a retried delivery: base × 2^(attempt-1) seconds, at most `max_backoff_s`.
    backoff_base_s: float = Field(default=5.0, gt=0)
    max_backoff_s: float = Field(default=900.0, gt=0)
    #: How long a worker holds a delivery it is sending; one still `sending` after this was
    #: cut off mid-send and is marked `unconfirmed` (never resent: Slack may have it).
    claim_s: float = Field(default=60.0, gt=0)
    #: Every this many seconds the scheduler (or `broker serve`) re-queues due deliveries and
    #: event batches whose task was lost (a Redis restart): the outbox is the truth.
    sweep_interval_s: float = Field(default=15.0, gt=0)
    #: A poll run's events not processed this long after ingest count as lost and are
    #: re-queued by the sweep.
    sweep_grace_s: float = Field(default=60.0, ge=0)


#: The environment variable (or `broker --config`) naming the config file.
CONFIG_ENV = "BROKER_CONFIG"
CONFIG_NAME = "broker.toml"


def config_file() -> Path | None:
    """The TOML file settings are read from: `$BROKER_CONFIG` (`broker --config`), else
    `broker.toml` in the data dir (`BROKER_DATA_DIR` or the default) when it exists.

    Raises:
        FileNotFoundError: `BROKER_CONFIG` names a file that does not exist.
    """
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{CONFIG_ENV}={explicit}: no such config file")
        return path
    data = os.environ.get("BROKER_DATA_DIR")
    candidate = (Path(data).expanduser() if data else default_data_dir()) / CONFIG_NAME
    return candidate if candidate.is_file() else None


class Settings(BaseSettings):
    """Every setting, from (highest first) the environment (`BROKER_*`, nested with `__`),
    then the config file (`config_file()`: the same names in lower case, nested sections as
    TOML tables, e.g. `public_url = "..."` and `[aws]` `regions = ["us-east-1"]`), then the
    defaults. One file read by every command, `serve`, workers and the scheduler, so they
    agree across shells."""

    model_config = SettingsConfigDict(
        env_prefix="BROKER_", env_nested_delimiter="__", extra="ignore"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = config_file()
        toml = (TomlConfigSettingsSource(settings_cls, toml_file=path),) if path else ()
        return (init_settings, env_settings, *toml, file_secret_settings)

    #: SQLAlchemy URL. Default: SQLite file in the data dir. PostgreSQL:
    #: `postgresql+psycopg://user@host:5432/db` (`postgres://` and `postgresql://` are accepted).
    database_url: str = ""
    data_dir: Path = Field(default_factory=default_data_dir)
    #: An offer not seen by a successful poll of its scope for this long is stale: shown only
    #: with --include-stale. Must exceed the longest poll interval.
    stale_after_minutes: int = Field(default=120, gt=0)
    #: Seconds between two polls of each enabled provider by `broker serve`'s embedded
    #: scheduler (`workers/embedded.py`); keep it below the stale TTL.
    poll_interval_s: int = Field(default=300, gt=0)
    #: Production mode: Celery's broker (and the scheduler's leader lock) in Redis, e.g.
    #: `redis://127.0.0.1:6379/0`. Unset = embedded mode (everything in-process).
    redis_url: str | None = None
    #: Random delay added to each scheduled poll (spreads providers' polls apart).
    poll_jitter_s: int = Field(default=15, ge=0)
    #: A degraded provider is polled less often: interval × 2^failures, at most this long.
    max_poll_backoff_s: int = Field(default=3600, gt=0)
    #: A process whose clock is off from the database's by more than this many seconds is
    #: reported skewed (`/readyz`, `broker_clock_skew_seconds`, a log error from the sweep);
    #: the ledger's expiry follows the database's clock whatever the skew.
    max_clock_skew_s: float = Field(default=30.0, gt=0)
    #: Hosts a Slack webhook URL may point at (`host` or `host:port`), comma-separated.
    #: `http://` is accepted only for a loopback host listed here (local tests).
    slack_webhook_hosts: CsvList = Field(default_factory=lambda: ["hooks.slack.com"])
    #: More allowed hosts on top of `slack_webhook_hosts` (which setting replaces the list).
    slack_webhook_extra_hosts: CsvList = None
    #: Slack Web API base URL for bot-token subscriptions (tests point it at a fake).
    slack_api_url: str = "https://slack.com/api/"
    #: Where users reach this API: links in Slack messages point here.
    public_url: str = "http://127.0.0.1:8000"
    #: Encrypts stored webhook URLs and bot tokens; unset = a key file in the data dir.
    secret_key: SecretStr | None = None
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    replay: ReplaySettings = Field(default_factory=ReplaySettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    risk: RiskSettings = Field(default_factory=RiskSettings)
    aws: AwsSettings = Field(default_factory=AwsSettings)
    gcp: GcpSettings = Field(default_factory=GcpSettings)
    azure: AzureSettings = Field(default_factory=AzureSettings)
    lambda_cloud: LambdaCloudSettings = Field(default_factory=LambdaCloudSettings)
    runpod: RunpodSettings = Field(default_factory=RunpodSettings)
    vast: VastSettings = Field(default_factory=VastSettings)
    verda: VerdaSettings = Field(default_factory=VerdaSettings)
    log_level: str = "WARNING"
    #: Requests a minute per API key (0 = unlimited), and the burst a key may spend at
    #: once; over it the API answers 429 with Retry-After (`broker.api.ratelimit`).
    rate_limit_per_minute: int = Field(default=1200, ge=0)
    rate_limit_burst: int = Field(default=200, ge=1)
    #: Request bodies larger than this are refused with 413 while they stream in, before
    #: the API key is checked or anything is parsed (`broker.api.limits`): JSON bodies, and
    #: CSV uploads (the reservation and usage imports, `.../import`).
    max_json_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_csv_body_bytes: int = Field(default=5_000_000, ge=1024)
    #: How long an `Idempotency-Key` is remembered (its retries replay the first answer).
    idempotency_ttl_hours: float = Field(default=24.0, gt=0)
    #: `text` (human) or `json` (one object per line, for log shippers); secrets redacted.
    log_format: Literal["text", "json"] = "text"
    #: `broker worker` / `broker scheduler`: serve this process's Prometheus metrics on this
    #: port (127.0.0.1 unless `metrics_host`); the API serves them at /metrics.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    _split_hosts = field_validator(
        "slack_webhook_hosts", "slack_webhook_extra_hosts", mode="before"
    )(_split_list)

    @model_validator(mode="after")
    def _extend_hosts(self) -> Settings:
        extra = [
            h
            for h in self.slack_webhook_extra_hosts or []
            if h not in (self.slack_webhook_hosts or [])
        ]
        if extra:
            self.slack_webhook_hosts = [*(self.slack_webhook_hosts or []), *extra]
        return self

    @field_validator("database_url")
    @classmethod
    def _normalise_driver(cls, v: str) -> str:
        for prefix in ("postgres://", "postgresql://"):
            if v.startswith(prefix):
                return "postgresql+psycopg://" + v[len(prefix) :]
        return v

    def poll_interval_for(self, provider: str) -> int:
        """Seconds between scheduled polls of `provider`: its own setting
        (`BROKER_<PROVIDER>__POLL_INTERVAL_S`) or `BROKER_POLL_INTERVAL_S`."""
        section = getattr(self, provider, None)
        own = getattr(section, "poll_interval_s", None)
        return int(own) if own else self.poll_interval_s

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'broker.db'}"


def get_settings() -> Settings:
    return Settings()
