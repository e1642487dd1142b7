"""Logs: secrets redacted from every record, in text and in JSON lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from broker.logs import configure_logging

SECRETS = {
    "webhook": "https://hooks.slack.com/services/T0AAA/B0BBB/abcdefSECRETxyz",
    "bot": "xoxb-12345-67890-SECRETtokenvalue",
    "key": "gpb_AbCdSECRETkeyvalue0123456789",
    "bearer": "Authorization: Bearer SECRETbearervalue",
    "query": "https://cloud.example/api?api_key=SECRETquerykey&x=1",
    "aws": "aws_secret_access_key=SECRETwJalrXUtnFEMI/K7MDENG/bPxRfiCY",
}


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    logger = logging.getLogger()
    handlers, level = list(logger.handlers), logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_never_reach_the_output(
    fmt: str, root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", fmt)
    log = logging.getLogger("broker.test")
    log.info(
        "posting to %s with %s",
        SECRETS["webhook"],
        SECRETS["bot"],
        extra={"target": {"channel": "#gpus", "token": SECRETS["bot"]}},
    )
    log.warning(
        "key %s header %s", SECRETS["key"], SECRETS["bearer"], extra={"url": SECRETS["query"]}
    )
    try:
        raise RuntimeError(f"failed calling {SECRETS['webhook']}")
    except RuntimeError:
        log.exception("delivery.crashed %s", SECRETS["aws"], extra={"delivery": 7})
    out = capsys.readouterr().err
    assert out.count("\n") >= 3
    for secret in SECRETS.values():
        tail = secret.split("SECRET", 1)[1].split("&")[0]  # the secret part of each value
        assert tail not in out, (secret, out)
    assert "hooks.slack.com/services/***" in out
    if fmt == "text":
        assert "url=https://cloud.example/api?api_key=***&x=1" in out  # extras after the message
        assert "delivery=7" in out and "Traceback" in out
    if fmt == "json":
        lines = [json.loads(line) for line in out.splitlines()]  # every line is one object
        assert [r["level"] for r in lines] == ["INFO", "WARNING", "ERROR"]
        assert lines[1]["url"].startswith("https://cloud.example/api?api_key=***")
        assert lines[2]["delivery"] == 7 and "RuntimeError" in lines[2]["exc"]
        assert lines[0]["logger"] == "broker.test" and lines[0]["ts"].endswith("+00:00")
        assert "#gpus" in lines[0]["target"]  # a dict extra, as redacted text


def test_uvicorn_access_lines_are_redacted_json(
    root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    """`broker serve` hands uvicorn's loggers to the root handler: an access line's raw URL
    (query string included) is redacted, and uvicorn's coloured copy is not a field."""
    configure_logging("INFO", "json")
    access = logging.getLogger("uvicorn.access")
    access.info(
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:5000",
        "GET",
        "/v1/offers?api_key=SECRETinquery&gpu=H100",
        "1.1",
        200,
    )
    logging.getLogger("uvicorn.error").info(
        "Started server process", extra={"color_message": "\x1b[36mStarted\x1b[0m"}
    )
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 2
    assert lines[0]["logger"] == "uvicorn.access"
    assert (
        lines[0]["message"] == '127.0.0.1:5000 - "GET /v1/offers?api_key=***&gpu=H100 HTTP/1.1" 200'
    )
    assert "color_message" not in lines[1] and lines[1]["message"] == "Started server process"
