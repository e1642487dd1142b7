"""Record and replay: a provider's raw HTTP exchanges of a poll, as one JSON-lines file.

Owns the recording format (docs/recording.md), its redaction, the matching of a request to
a recorded exchange, and the two process-wide switches:

- `recording(directory)`: while open, every exchange of every tapped client is appended to
  `<directory>/<provider>.jsonl` (created at the provider's first exchange). Used by
  `broker poll --record DIR`.
- `replaying(directory, *providers)`: while open, those providers' tapped clients answer
  every request from their file and never touch the network. Used by tests; the setting
  `BROKER_<PROVIDER>__REPLAY_DIR` does the same for one adapter for its whole life
  (`Tap.for_settings`).

A `Tap` is what a transport hook asks: "replaying? then here is the answer; recording? then
keep this". The hooks themselves are small and live beside the transport they hook:
`providers._record_httpx` (the shared `JsonApi`), `providers._record_botocore` (boto3 event
hooks), `providers._record_requests` (a requests adapter: google-cloud-compute's REST
session and azure-core's RequestsTransport). The adapters' own code paths (retries, error mapping,
parsing) run unchanged on a replayed answer; only the bytes come from the file.

What is written is redacted before it reaches the disk: request headers other than
`Content-Type` and `X-Amz-Target` are dropped (so `Authorization`, cookies, API-key headers,
SigV4 signatures never are), query parameters that carry credentials (`key`, `api_key`,
`access_token`, `X-Amz-Signature`...) are dropped, JSON and form fields named like a
credential (`client_secret`, `access_token`, `password`...) become `***`, and every secret
the adapter holds or the tap saw in a header, parameter or such a field is replaced by `***`
wherever it appears. Identifiers that are not credentials (an Azure subscription id, a GCP
project, an AWS region) stay: requests are matched on them.

Not covered: streaming bodies (none of the polled calls streams), and credential exchanges
made by an SDK's own credential chain (they do not go through the tapped clients, so they
are neither recorded nor needed on replay).
"""

from __future__ import annotations

import base64
import difflib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr

from broker.domain import redact
from providers.base import RequestRejected

log = logging.getLogger(__name__)

FORMAT = "broker-recording"
FORMAT_VERSION = 1
SUFFIX = ".jsonl"
REDACTED = "***"
TIMESTAMP = "<timestamp>"

#: Request headers written: what tells two calls to one URL apart (AWS's JSON protocols name
#: the operation only in X-Amz-Target) and how the body is encoded. Everything else,
#: `Authorization` first, is dropped.
REQUEST_HEADERS = frozenset({"content-type", "x-amz-target"})
#: Response headers written: what the adapters and the SDKs' parsers read.
RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "retry-after",
        "location",
        "link",
        "x-amzn-errortype",
        "x-amzn-query-error",
        "x-ms-error-code",
    }
)
RESPONSE_HEADER_PREFIXES = ("x-ratelimit-", "ratelimit-", "x-ms-ratelimit-")
#: Query parameters that carry credentials (lower case): dropped from recorded URLs and from
#: the URLs matched on replay.
SECRET_PARAMS = frozenset(
    {
        "key",
        "api_key",
        "apikey",
        "api-key",
        "access_token",
        "token",
        "client_secret",
        "password",
        "sig",
        "signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
    }
)
#: JSON / form field names (lower case, without `_` and `-`) whose values are credentials.
SECRET_FIELDS = frozenset(
    {
        "accesstoken",
        "refreshtoken",
        "idtoken",
        "token",
        "clientid",
        "clientsecret",
        "password",
        "apikey",
        "secret",
        "secretkey",
        "secretaccesskey",
        "sessiontoken",
        "authorization",
        "privatekey",
    }
)
#: Request headers whose values are credentials: learnt (then redacted everywhere) before
#: the headers are dropped.
_SECRET_HEADERS = ("authorization", "x-api-key", "api-key", "x-amz-security-token", "cookie")
_SIGV4 = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")
_JSON_PAIR = re.compile(r'"((?:[^"\\]|\\.)*)"(\s*:\s*)"((?:[^"\\]|\\.)*)"')
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?")
_LIBRARIES = ("httpx", "botocore", "requests", "azure-core", "google-cloud-compute")


class NotRecorded(RequestRejected):
    """Replaying, the adapter sent a request the recording does not hold (a regression, or
    a replay with other settings than the recording's)."""


class RecordingError(Exception):
    """A recording file that cannot be read (not this format, another provider, bad line)."""


class RecordingNotFound(FileNotFoundError):
    """Replay was asked for, but the directory holds no recording of this provider."""


# ------------------------------------------------------------------------ wire records


@dataclass(frozen=True)
class WireRequest:
    """A request as a hook saw it, before redaction (never written as is)."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None


@dataclass(frozen=True)
class WireResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class WireFailure:
    """No answer: `kind` is `timeout` or `connection`; `type` the exception class name of the
    transport that failed (replayed as that class when the replaying transport has it)."""

    kind: Literal["timeout", "connection"]
    type: str
    message: str


@dataclass(frozen=True)
class Exchange:
    """One recorded line: the (redacted) request and what came back."""

    n: int
    request: Mapping[str, Any]
    outcome: WireResponse | WireFailure


def _text_or_b64(body: bytes) -> dict[str, str]:
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body_b64": base64.b64encode(body).decode("ascii")}


def _body_of(doc: Mapping[str, Any]) -> bytes | None:
    if "body_b64" in doc:
        return base64.b64decode(doc["body_b64"])
    body = doc.get("body")
    return body.encode("utf-8") if isinstance(body, str) else None


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


# ----------------------------------------------------------------------- redaction


def _field_is_secret(name: str) -> bool:
    return name.lower().replace("_", "").replace("-", "") in SECRET_FIELDS


class Redactor:
    """Known secrets (given, and learnt from what a request carried) and the rules above.

    Thread-safe: adapters fan out on pools and one tap serves them all."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: set[str] = {s for s in secrets if s and len(s) >= 4}
        self._lock = threading.Lock()

    def learn(self, value: str | None) -> None:
        if value and len(value) >= 8 and value != REDACTED:
            with self._lock:
                self._secrets.add(value)

    @property
    def secrets(self) -> tuple[str, ...]:
        with self._lock:  # longest first: a secret containing another is replaced whole
            return tuple(sorted(self._secrets, key=len, reverse=True))

    def text(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def learn_request(self, request: WireRequest) -> None:
        """Remember the credentials a request carries before its headers are dropped."""
        headers = _lower(request.headers)
        for name in _SECRET_HEADERS:
            value = headers.get(name)
            if not value:
                continue
            sigv4 = _SIGV4.search(value)
            if sigv4:
                self.learn(sigv4.group(1))
            elif name == "authorization" and " " in value:
                self.learn(value.split(" ", 1)[1].strip())
            else:
                self.learn(value.strip())
        for name, value in parse_qsl(urlsplit(request.url).query, keep_blank_values=True):
            if name.lower() in SECRET_PARAMS:
                self.learn(value)

    def url(self, url: str) -> str:
        """`url` without credential parameters or user info, known secrets replaced."""
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = parts.query  # as sent (readable), unless a parameter has to go
        if any(k.lower() in SECRET_PARAMS for k, _ in pairs):
            query = urlencode([(k, v) for k, v in pairs if k.lower() not in SECRET_PARAMS])
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return self.text(urlunsplit((parts.scheme, netloc, parts.path, query, "")))

    def headers(self, headers: Mapping[str, str], *, response: bool) -> dict[str, str]:
        keep = RESPONSE_HEADERS if response else REQUEST_HEADERS
        out: dict[str, str] = {}
        for name, value in sorted(_lower(headers).items()):
            if name in keep or (response and name.startswith(RESPONSE_HEADER_PREFIXES)):
                out[name] = redact(value, self.secrets)
        return out

    def body(self, body: bytes, content_type: str) -> bytes:
        """Credential fields set to `***` (their values learnt), known secrets replaced.
        Bytes that are not UTF-8 are left as they are."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return body
        if "x-www-form-urlencoded" in content_type:
            pairs = parse_qsl(text, keep_blank_values=True)
            if any(_field_is_secret(k) for k, _ in pairs):
                for k, v in pairs:
                    if _field_is_secret(k):
                        self.learn(v)
                clean = [(k, REDACTED if _field_is_secret(k) else v) for k, v in pairs]
                text = urlencode(clean, safe="*")
        else:
            text = _JSON_PAIR.sub(self._json_pair, text)
        return self.text(text).encode("utf-8")

    def _json_pair(self, m: re.Match[str]) -> str:
        if not _field_is_secret(m.group(1)):
            return m.group(0)
        self.learn(m.group(3))
        return f'"{m.group(1)}"{m.group(2)}"{REDACTED}"'


# ------------------------------------------------------------------------ matching


def _mask(value: Any) -> Any:
    """Timestamps masked (a spot-price query asks "as of now"), recursively."""
    if isinstance(value, str):
        return TIMESTAMP if _ISO_TIME.fullmatch(value) else value
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    return value


def _canonical_url(url: str) -> str:
    parts = urlsplit(url)
    query = sorted(
        (k, _mask(v))
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k.lower() not in SECRET_PARAMS
    )
    host = parts.netloc.rsplit("@", 1)[-1].lower()
    return urlunsplit((parts.scheme.lower(), host, parts.path or "/", urlencode(query), ""))


def _canonical_body(body: bytes | None, content_type: str) -> str:
    if not body:
        return ""
    text = body.decode("utf-8", "replace")
    if "x-www-form-urlencoded" in content_type:
        return urlencode(sorted((k, _mask(v)) for k, v in parse_qsl(text, keep_blank_values=True)))
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    return json.dumps(_mask(doc), sort_keys=True, separators=(",", ":"))


def match_key(method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> str:
    """What replay matches a request on: method, URL (credential parameters dropped, query
    sorted), the AWS operation and signing scope, and the body (JSON and form bodies
    canonical); timestamps in query and body are masked. Call it on redacted parts."""
    h = _lower(headers)
    return "\n".join(
        [
            method.upper(),
            _canonical_url(url),
            h.get("x-amz-target", ""),
            h.get("x-broker-signed-for", ""),
            _canonical_body(body, h.get("content-type", "")),
        ]
    )


def _signed_for(headers: Mapping[str, str]) -> str | None:
    """`region/service` of a SigV4 signature: with one endpoint for every region (a local
    fake, `AWS_ENDPOINT_URL`), only the signature tells two regions' calls apart."""
    found = _SIGV4.search(_lower(headers).get("authorization", ""))
    return f"{found.group(2)}/{found.group(3)}" if found else None


# ---------------------------------------------------------------------- settings summary


def settings_summary(settings: BaseModel | None) -> dict[str, Any]:
    """The provider settings a recording was made with, minus credentials: a replay with
    other endpoints, regions or filters asks other questions."""
    if settings is None:
        return {}
    out: dict[str, Any] = {}
    for name, value in settings:
        if name == "replay_dir" or isinstance(value, SecretStr) or _field_is_secret(name):
            continue
        dumped = json.loads(json.dumps(value, default=str))
        out[name] = redact(dumped) if isinstance(dumped, str) else dumped
    return out


def _versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in ("gpu-capacity-broker", *_LIBRARIES):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


# ------------------------------------------------------------------------- recording


class Recorder:
    """One provider's file while recording: the header line, then one line per exchange,
    flushed as it happens (a poll that crashes leaves what it did). Thread-safe."""

    def __init__(
        self, path: Path, provider: str, settings: BaseModel | None, recorded_at: datetime
    ) -> None:
        self.path = path
        self.provider = provider
        self.exchanges = 0
        self._lock = threading.Lock()
        self._file: IO[str] = path.open("w", encoding="utf-8", newline="\n")
        versions = _versions()
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "provider": provider,
            "recorded_at": recorded_at.astimezone(UTC).isoformat(),
            "broker_version": versions.pop("gpu-capacity-broker", "unknown"),
            "libraries": versions,
            "settings": settings_summary(settings),
        }
        self._write(header)

    def _write(self, doc: Mapping[str, Any], secrets: Iterable[str] = ()) -> None:
        line = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        for secret in secrets:  # the last line of defence: nothing known leaves
            line = line.replace(secret, REDACTED)
            line = line.replace(json.dumps(secret)[1:-1], REDACTED)
        self._file.write(line + "\n")
        self._file.flush()

    def write(self, entry: dict[str, Any], secrets: Iterable[str]) -> None:
        with self._lock:
            self.exchanges += 1
            self._write({"n": self.exchanges, **entry}, secrets)

    def close(self) -> None:
        with self._lock:
            self._file.close()


class RecordingSession:
    """`recording(directory)`: the recorders of the providers seen so far."""

    def __init__(self, directory: Path, clock: Callable[[], datetime]) -> None:
        self.directory = directory
        self.clock = clock
        self.recorders: dict[str, Recorder] = {}
        self._lock = threading.Lock()

    def recorder(self, provider: str, settings: BaseModel | None) -> Recorder:
        with self._lock:
            rec = self.recorders.get(provider)
            if rec is None:
                path = self.directory / f"{provider}{SUFFIX}"
                rec = self.recorders[provider] = Recorder(path, provider, settings, self.clock())
            return rec

    @property
    def files(self) -> dict[str, tuple[Path, int]]:
        """provider -> (file, exchanges written)."""
        return {p: (r.path, r.exchanges) for p, r in sorted(self.recorders.items())}

    def close(self) -> None:
        for rec in self.recorders.values():
            rec.close()


_state_lock = threading.Lock()
_session: RecordingSession | None = None
_replays: dict[str, Replay] = {}


@contextmanager
def recording(
    directory: Path, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> Iterator[RecordingSession]:
    """Record every tapped client's exchanges into `directory` (created if missing) until
    the block ends. One recording at a time per process."""
    global _session
    directory.mkdir(parents=True, exist_ok=True)
    session = RecordingSession(directory, clock)
    with _state_lock:
        if _session is not None:
            raise RuntimeError(f"already recording into {_session.directory}")
        _session = session
    try:
        yield session
    finally:
        with _state_lock:
            _session = None
        session.close()


def maybe_recording(directory: Path | None) -> AbstractContextManager[RecordingSession | None]:
    """`recording(directory)`, or no recording when `directory` is None (an optional flag)."""
    return recording(directory) if directory is not None else nullcontext()


# ---------------------------------------------------------------------------- replay


def _read_header(path: Path, line: str, provider: str) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RecordingError(f"{path}: line 1 is not a {FORMAT} header")
    if header.get("version") != FORMAT_VERSION:
        raise RecordingError(
            f"{path}: format version {header.get('version')!r}, this broker reads {FORMAT_VERSION}"
        )
    if header.get("provider") != provider:
        raise RecordingError(f"{path}: a recording of {header.get('provider')!r}, not {provider!r}")
    return header


def _read_exchange(path: Path, lineno: int, line: str) -> Exchange:
    try:
        doc = json.loads(line)
        request = doc["request"]
        if "failure" in doc:
            f = doc["failure"]
            kind = f["kind"]
            if kind not in ("timeout", "connection"):
                raise ValueError(f"unknown failure kind {kind!r}")
            outcome: WireResponse | WireFailure = WireFailure(kind, f["type"], f["message"])
        else:
            r = doc["response"]
            outcome = WireResponse(int(r["status"]), dict(r["headers"]), _body_of(r) or b"")
        if not isinstance(request.get("method"), str) or not isinstance(request.get("url"), str):
            raise ValueError("a request needs a method and a url")
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordingError(f"{path}:{lineno}: not an exchange ({exc})") from None
    return Exchange(int(doc.get("n", lineno - 1)), request, outcome)


class Replay:
    """A recording, answering requests. Each request takes the least-used exchange with its
    match key (ties: the earliest), so a key recorded several times (a retried 429, then its
    200) is answered in recorded order, and polling again replays the recording again."""

    def __init__(self, path: Path, provider: str) -> None:
        if not path.is_file():
            raise RecordingNotFound(f"no recording of {provider} at {path}")
        self.path = path
        self.provider = provider
        self.exchanges: list[Exchange] = []
        with path.open(encoding="utf-8") as f:
            lines = iter(enumerate(f, start=1))
            _, first = next(lines, (1, ""))
            self.header = _read_header(path, first, provider)
            for lineno, line in lines:
                if line.strip():
                    self.exchanges.append(_read_exchange(path, lineno, line))
        self._by_key: dict[str, list[int]] = {}
        for i, ex in enumerate(self.exchanges):
            req = ex.request
            key = match_key(req["method"], req["url"], _request_headers(req), _body_of(req))
            self._by_key.setdefault(key, []).append(i)
        self._used = [0] * len(self.exchanges)
        self._lock = threading.Lock()

    def answer(self, key: str, shown: str) -> Exchange:
        """The exchange for a request with `key` (`shown` names it in the error).

        Raises:
            NotRecorded: nothing in the file matches; the message names the nearest URL.
        """
        with self._lock:
            candidates = self._by_key.get(key)
            if candidates:
                best = min(candidates, key=lambda i: (self._used[i], i))
                self._used[best] += 1
                return self.exchanges[best]
        recorded = sorted({f"{e.request['method']} {e.request['url']}" for e in self.exchanges})
        near = difflib.get_close_matches(shown, recorded, n=1, cutoff=0.0)
        hint = f"; nearest recorded: {near[0]}" if near else ""
        raise NotRecorded(
            f"{shown}: not in the recording {self.path.name} "
            f"({len(self.exchanges)} exchanges){hint}"
        )


def _request_headers(request: Mapping[str, Any]) -> dict[str, str]:
    headers = dict(request.get("headers") or {})
    if request.get("signed_for"):
        headers["x-broker-signed-for"] = str(request["signed_for"])
    return headers


@contextmanager
def replaying(directory: Path, *providers: str) -> Iterator[dict[str, Replay]]:
    """Answer the tapped clients of `providers` (default: every provider with a file in
    `directory`) from their recordings until the block ends; other providers are untouched.

    Raises:
        RecordingNotFound, RecordingError: a named provider has no readable recording.
    """
    names = providers or tuple(sorted(p.stem for p in directory.glob(f"*{SUFFIX}")))
    loaded = {name: Replay(directory / f"{name}{SUFFIX}", name) for name in names}
    with _state_lock:
        busy = sorted(set(loaded) & set(_replays))
        if busy:
            raise RuntimeError(f"already replaying {', '.join(busy)}")
        _replays.update(loaded)
    try:
        yield loaded
    finally:
        with _state_lock:
            for name in loaded:
                _replays.pop(name, None)


# ------------------------------------------------------------------------------- tap


class Tap:
    """One provider's hook into its clients: replay from a file, record, or stay out of the
    way (one dict look-up per request when neither is on)."""

    def __init__(
        self,
        provider: str,
        *,
        replay: Replay | None = None,
        secrets: Iterable[str | None] = (),
        settings: BaseModel | None = None,
    ) -> None:
        self.provider = provider
        self.replay = replay
        self.settings = settings
        self.redactor = Redactor(secrets)

    @classmethod
    def for_settings(
        cls, provider: str, settings: BaseModel, secrets: Iterable[str | None] = ()
    ) -> Tap:
        """The tap of an adapter built from `settings`: replaying for its whole life when
        `settings.replay_dir` (`BROKER_<PROVIDER>__REPLAY_DIR`) is set.

        Raises:
            RecordingNotFound, RecordingError: the directory holds no readable recording.
        """
        directory = getattr(settings, "replay_dir", None)
        replay = None
        if directory:
            replay = Replay(Path(directory) / f"{provider}{SUFFIX}", provider)
            # Loud on purpose: an adapter left replaying would serve a stale market forever.
            log.warning(
                "provider.replaying %s: answers come from %s, not the network",
                provider,
                replay.path,
            )
        return cls(provider, replay=replay, secrets=secrets, settings=settings)

    def _source(self) -> Replay | None:
        return self.replay or _replays.get(self.provider)

    def _recorder(self) -> Recorder | None:
        session = _session
        return session.recorder(self.provider, self.settings) if session else None

    @property
    def active(self) -> bool:
        return self._source() is not None or _session is not None

    def replayed(self, request: WireRequest) -> Exchange | None:
        """The recorded answer to `request` when replaying (recorded again when a recording
        is open too), None when the request must really be sent.

        Raises:
            NotRecorded: replaying, and the recording holds no such request.
        """
        source = self._source()
        if source is None:
            return None
        entry = self._entry_request(request)
        body = _body_of(entry)
        key = match_key(entry["method"], entry["url"], _request_headers(entry), body)
        try:
            exchange = source.answer(key, f"{entry['method']} {entry['url']}")
        except NotRecorded as exc:
            raise NotRecorded(f"{exc}{_settings_hint(source, self.settings)}") from None
        self._write(entry, exchange.outcome, None)
        return exchange

    def record(
        self, request: WireRequest, outcome: WireResponse | WireFailure, elapsed_s: float | None
    ) -> None:
        """Keep a real exchange when a recording is open."""
        if _session is not None:
            self._write(self._entry_request(request), outcome, elapsed_s)

    def _entry_request(self, request: WireRequest) -> dict[str, Any]:
        r = self.redactor
        r.learn_request(request)
        entry: dict[str, Any] = {
            "method": request.method.upper(),
            "url": r.url(request.url),
            "headers": r.headers(request.headers, response=False),
        }
        signed_for = _signed_for(request.headers)
        if signed_for:
            entry["signed_for"] = signed_for
        if request.body:
            ctype = _lower(request.headers).get("content-type", "")
            entry.update(_text_or_b64(r.body(request.body, ctype)))
        return entry

    def _write(
        self,
        request: dict[str, Any],
        outcome: WireResponse | WireFailure,
        elapsed_s: float | None,
    ) -> None:
        recorder = self._recorder()
        if recorder is None:
            return
        entry: dict[str, Any] = {"request": request}
        r = self.redactor
        if isinstance(outcome, WireFailure):
            entry["failure"] = {
                "kind": outcome.kind,
                "type": outcome.type,
                "message": redact(r.text(outcome.message), r.secrets)[:300],
            }
        else:
            ctype = _lower(outcome.headers).get("content-type", "")
            entry["response"] = {
                "status": outcome.status,
                "headers": r.headers(outcome.headers, response=True),
                **_text_or_b64(r.body(outcome.body, ctype)),
            }
        if elapsed_s is not None:
            entry["elapsed_ms"] = round(elapsed_s * 1000, 1)
        recorder.write(entry, r.secrets)


def _settings_hint(replay: Replay, settings: BaseModel | None) -> str:
    """A note naming the settings that differ from the recording's (the usual reason a
    replayed request is not in the file), or ""."""
    if settings is None:
        return ""
    recorded = replay.header.get("settings") or {}
    now = settings_summary(settings)
    differ = sorted(k for k in recorded.keys() & now.keys() if recorded[k] != now[k])
    if not differ:
        return ""
    return f" (settings differ from the recording's: {', '.join(differ)})"
