"""Lambda Cloud: on-demand GPU instances and where they have capacity right now.

## What it calls
One request per poll: `GET {base_url}/instance-types` (operation `listInstanceTypes`,
`/api/v1/instance-types` on the server `https://cloud.lambda.ai/`; `cloud.lambdalabs.com` is
the deprecated secondary server; `BROKER_LAMBDA_CLOUD__BASE_URL` to change it), with
`Authorization: Bearer <API key>`. The answer is a map keyed by instance-type name, schema
`InstanceTypes` → `InstanceTypesItem` → `InstanceType` / `InstanceTypeSpecs` / `Region` of
Lambda's OpenAPI spec (https://docs.lambda.ai/api/cloud, version 1.8.3; vendored as
`openapi-1.8.3.json` in alexandervaneck/lambda-ai-cloud-api-client), every field required:

    {"data": {"gpu_8x_h100_sxm5": {
        "instance_type": {"name", "description", "gpu_description", "price_cents_per_hour",
                          "specs": {"vcpus", "memory_gib", "storage_gib", "gpus"}},
        "regions_with_capacity_available": [{"name": "us-east-1", "description": ...}]}}}

No pagination. Lambda limits requests to about one per second; one call per poll is well
inside that. Failures answer `{"error": {"code", "message", "suggestion"}}`; only `code` is
read (the spec says `message` and `suggestion` may change): `global/invalid-api-key` (401)
and `global/account-inactive` (403) are the documented ones for this operation, upstream
faults have codes `provider/...`.

## What it returns
One `on_demand` offer per (instance type, region listed in `regions_with_capacity_available`):
- `price_per_hour` = `price_cents_per_hour` / 100, in Decimal (the integer is US cents per
  instance-hour; per GPU-hour is that divided by `specs.gpus`, done by `Offer`);
- `gpu_count` = `specs.gpus`, `vcpus` = `specs.vcpus`, `memory_gb` = `specs.memory_gib`;
- `gpu_model` via `broker.gpus.normalise` of `gpu_description` ("H100 (80 GB SXM5)": the model,
  then model + form factor, with the stated memory, and Lambda's instance-type rules for
  H100 PCIe/SXM), falling back to the model part of the type name (`gpu_8x_a100_80gb_sxm4`
  → "a100 80gb"). A GPU the catalogue does not know is kept with `gpu_model` None and
  `gpu_name_raw` = `gpu_description` (the type name when there is none), through
  `providers.base.model_fields`: counted as unrecognised by the ingest, never guessed, never
  dropped. Types without GPUs (`specs.gpus` 0, CPU types) are skipped as `no_gpu`;
- `gpu_memory_gb` = the GB figure in `gpu_description` when it states one, else the
  catalogue's;
- `availability` = `available`, `available_count` None: Lambda says *that* a region has capacity,
  never how much;
- country / jurisdiction / continent from `broker.regions` (`lambda_cloud` rows); a region the
  table lacks keeps its offers with them None (counted as unrecognised by the ingest) and
  adds a note.

## Capacity by presence
Lambda lists only the regions that have capacity now, so a (type, region) missing from one
poll is sold out there, not withdrawn. The poll covers the whole provider in one scope
(`Scope("lambda_cloud")`) and returns `capacity_by_presence` = every instance type in the
answer; the ingest turns a known offer of such a type that is missing into
`availability_changed → unavailable`, and withdraws offers of types gone from the answer.
A failed call is a failed poll (`failed_poll`): nothing is withdrawn or marked sold out.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

import httpx

from broker import gpus, regions
from broker.config import LambdaCloudSettings, Settings
from broker.domain import (
    Availability,
    Clock,
    Market,
    Offer,
    PollResult,
    Scope,
    to_count,
    to_price,
)
from providers._http import BACKOFF_BASE_S, JsonApi
from providers.base import (
    AuthFailed,
    MalformedResponse,
    ProviderDisabled,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    RequestRejected,
    failed_poll,
    model_fields,
    place_fields,
    redact,
    register,
)

NAME = "lambda_cloud"
PATH = "/instance-types"
MAX_NOTES = 50

#: "H100 (80 GB SXM5)", "A10 (24 GB PCIe)", "RTX 6000 (24 GB)", "NVIDIA A100 (80 GB)".
_GPU_DESCRIPTION = re.compile(
    r"^\s*(?P<model>[^()]+?)\s*\(\s*(?P<gb>\d+(?:\.\d+)?)\s*GB\s*(?P<form>[^()]*?)\s*\)\s*$",
    re.IGNORECASE,
)
#: gpu_{count}x_{model}[_{suffix}...]: gpu_1x_a10, gpu_8x_a100_80gb_sxm4, gpu_1x_gh200.
_TYPE_NAME = re.compile(r"^gpu_(?P<count>\d+)x_(?P<rest>[a-z0-9_]+)$", re.IGNORECASE)


class _Tally:
    def __init__(self) -> None:
        self.skipped: Counter[str] = Counter()
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text)

    def skip(self, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        self.note(f"{NAME} {detail}: {reason}")


def _decimal(value: Any) -> Decimal | None:
    """A finite Decimal from a JSON number or numeric string (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return None
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


#: Form-factor words the catalogue does not distinguish for most models (or that Lambda's
#: instance-type rule settles, for H100): dropped when the model with them is unknown.
#: "NVL" is not among them: an H200 NVL is not an H200 SXM.
_DROPPABLE_FORM = re.compile(r"^(sxm\d*|pcie)$", re.IGNORECASE)


def gpu_of(
    instance_type: str, gpu_description: str | None
) -> tuple[gpus.GpuModel | None, Decimal | None]:
    """The catalogue entry of a Lambda type's GPU and the per-GPU GB its description states.

    From `gpu_description` ("H100 (80 GB SXM5)"): the model with its form factor
    ("H100 SXM5"), then, when the form is SXM*/PCIe, the model alone ("A10"), with the
    stated memory (which chooses between A100 40 and 80 GB). Only when the description is
    missing or not of that shape: the model words of the type name, then without a trailing
    SXM*/PCIe word (`gpu_8x_a100_80gb_sxm4` → "a100 80gb sxm4", "a100 80gb").

    The entry is None when nothing matches what the catalogue knows: the offer is kept
    without a model, never guessed.
    """
    memory_gb: Decimal | None = None
    candidates: list[str] = []
    m = _GPU_DESCRIPTION.match(gpu_description) if gpu_description else None
    if m:
        memory_gb = Decimal(m.group("gb"))
        model, form = m.group("model"), m.group("form")
        if form:
            candidates.append(f"{model} {form}")
        if not form or _DROPPABLE_FORM.match(form):
            candidates.append(model)
    elif gpu_description and gpu_description.strip():
        candidates.append(gpu_description)
    else:
        name = _TYPE_NAME.match(instance_type)
        if name:
            words = name.group("rest").split("_")
            candidates.append(" ".join(words))
            if len(words) > 1 and _DROPPABLE_FORM.match(words[-1]):
                candidates.append(" ".join(words[:-1]))
    memory_mib = int(memory_gb * 1024) if memory_gb is not None else None
    for candidate in candidates:
        entry = gpus.normalise(
            candidate, provider=NAME, instance_type=instance_type, memory_mib=memory_mib
        )
        if entry is not None:
            return entry, memory_gb
    return None, memory_gb


def _error_from_envelope(error: Any) -> ProviderError:
    """A ProviderError for Lambda's `{"error": {...}}` envelope, branching on `code` only."""
    code = str(error.get("code", "")) if isinstance(error, Mapping) else ""
    text = f"GET {PATH}: Lambda error {code or '(no code)'}"
    if code.startswith("provider/"):
        return ProviderUnavailable(text)
    if code in ("global/invalid-api-key", "global/account-inactive", "global/forbidden"):
        return AuthFailed(text)
    if code == "global/quota-exceeded":
        return RateLimited(text)
    return RequestRejected(text)


class _Parsed:
    def __init__(self) -> None:
        self.offers: list[Offer] = []
        self.listed: set[str] = set()
        self.tally = _Tally()


def _malformed(name: str, what: str) -> MalformedResponse:
    return MalformedResponse(f"GET {PATH}: instance type {name!r}: {what}")


@dataclass(frozen=True)
class _Entry:
    """One `InstanceTypesItem`, its required fields checked."""

    name: str
    itype: Mapping[str, Any]
    specs: Mapping[str, Any]
    count: Decimal
    cents: Decimal
    regions: list[str]


def _read_entry(key: str, entry: Any) -> _Entry:
    """The fields of one instance type the offers need.

    Raises:
        MalformedResponse: a required field is missing or of the wrong type.
    """
    itype = entry.get("instance_type") if isinstance(entry, Mapping) else None
    if not isinstance(itype, Mapping):
        raise _malformed(key, "no 'instance_type' object")
    name = itype.get("name", key)
    if not isinstance(name, str) or not name:
        raise _malformed(key, "no name")
    specs = itype.get("specs")
    if not isinstance(specs, Mapping):
        raise _malformed(name, "no 'specs' object")
    count = _decimal(specs.get("gpus"))
    if count is None:
        raise _malformed(name, f"specs.gpus is {specs.get('gpus')!r}")
    cents = _decimal(itype.get("price_cents_per_hour"))
    if cents is None or cents < 0:
        raise _malformed(name, f"price_cents_per_hour is {itype.get('price_cents_per_hour')!r}")
    regions_list = entry.get("regions_with_capacity_available")
    if not isinstance(regions_list, list):
        raise _malformed(name, "no 'regions_with_capacity_available' list")
    region_names: list[str] = []
    for region_entry in regions_list:
        region = region_entry.get("name") if isinstance(region_entry, Mapping) else None
        if not isinstance(region, str) or not region:
            raise _malformed(name, f"region entry {region_entry!r} has no name")
        region_names.append(region)
    return _Entry(name, itype, specs, count, cents, region_names)


def _entry_offers(e: _Entry, tally: _Tally) -> list[Offer]:
    """One on-demand offer per region with capacity (the type sells a GPU at a price)."""
    description = e.itype.get("gpu_description")
    stated = description if isinstance(description, str) and description.strip() else None
    model, stated_gb = gpu_of(e.name, stated)
    memory_gb = stated_gb
    if memory_gb is None and model is not None:
        memory_gb = _opt_decimal(model.memory_gb)
    raw = {
        "name": e.name,
        "gpu_description": description,
        "price_cents_per_hour": e.itype.get("price_cents_per_hour"),
        "specs": dict(e.specs),
    }
    offers: list[Offer] = []
    for region in e.regions:
        info = regions.resolve(NAME, region)
        if info is None:
            tally.note(f"{NAME} {e.name}: region {region!r} not in broker/data/regions.csv")
        offers.append(
            Offer(
                provider=NAME,
                region=region,
                instance_type=e.name,
                market=Market.ON_DEMAND,
                **model_fields(model, stated or e.name),
                gpu_count=to_count(e.count),
                gpu_memory_gb=memory_gb,
                vcpus=_decimal(e.specs.get("vcpus")),
                memory_gb=_decimal(e.specs.get("memory_gib")),
                **place_fields(info),
                price_per_hour=to_price(e.cents / 100),
                availability=Availability.AVAILABLE,
                available_count=None,
                raw=raw,
            )
        )
    return offers


def parse_instance_types(doc: Any) -> _Parsed:
    """Offers from a `GET /instance-types` answer.

    A type the broker cannot sell is skipped and counted (`no_gpu`, `zero_price`); a GPU the
    catalogue does not know is kept without a model; a type whose fields are not the
    documented shape fails the whole answer, since the poll covers the whole provider and
    must not withdraw or sell out what it could not read.

    Raises:
        MalformedResponse: not `{"data": {name: {...}}}`, or a type's fields are missing or
            of the wrong type.
        ProviderError: the answer is Lambda's error envelope (mapped by its `code`).
    """
    if isinstance(doc, Mapping) and "data" not in doc and "error" in doc:
        raise _error_from_envelope(doc["error"])
    if not isinstance(doc, Mapping) or not isinstance(doc.get("data"), Mapping):
        raise MalformedResponse(f"GET {PATH}: answer has no 'data' object")
    out = _Parsed()
    for key, entry in doc["data"].items():
        e = _read_entry(str(key), entry)
        out.listed.add(e.name)
        if e.count <= 0:
            out.tally.skipped["no_gpu"] += 1
        elif e.cents == 0:
            out.tally.skip("zero_price", e.name)
        else:
            out.offers += _entry_offers(e, out.tally)
    return out


def _opt_decimal(value: int | None) -> Decimal | None:
    return Decimal(value) if value is not None else None


@register
class LambdaCloud:
    """The Lambda Cloud adapter; see the module docstring."""

    name: ClassVar[str] = NAME

    def __init__(
        self,
        api_key: str,
        settings: LambdaCloudSettings | None = None,
        *,
        clock: Clock,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        backoff_base_s: float = BACKOFF_BASE_S,
    ) -> None:
        self.settings = settings or LambdaCloudSettings()
        self.clock = clock
        self._secrets = (api_key,)
        self.api = JsonApi(
            NAME,
            self.settings.base_url,
            self.settings,
            headers={"Authorization": f"Bearer {api_key}"},
            secrets=self._secrets,
            transport=transport,
            sleep=sleep,
            backoff_base_s=backoff_base_s,
        )

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> LambdaCloud:
        key = settings.lambda_cloud.api_key
        if key is None or not key.get_secret_value().strip():
            raise ProviderDisabled(
                "set BROKER_LAMBDA_CLOUD__API_KEY to a Lambda Cloud API key "
                "(cloud.lambda.ai → API keys) to enable lambda_cloud"
            )
        return cls(key.get_secret_value().strip(), settings.lambda_cloud, clock=clock)

    @property
    def calls(self) -> int:
        """HTTP requests made so far (retries included)."""
        return self.api.calls

    def close(self) -> None:
        self.api.close()

    def fetch(self) -> PollResult:
        fetched_at: datetime = self.clock()
        try:
            doc = self.api.request("GET", PATH)
            parsed = parse_instance_types(doc)
        except ProviderError as exc:
            return failed_poll(NAME, exc, self.clock, self._secrets)
        notes = [redact(n, self._secrets) for n in parsed.tally.notes]
        return PollResult(
            offers=parsed.offers,
            scopes_ok=[Scope(NAME)],
            scope_errors=[],
            fetched_at=fetched_at,
            skipped=dict(parsed.tally.skipped),
            notes=notes,
            capacity_by_presence=frozenset((NAME, t) for t in parsed.listed),
        )
