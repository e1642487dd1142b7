"""The names a user may filter by, and "did you mean" for the ones that name nothing.

A filter value that names nothing the broker knows (`--provider lambda` for
`lambda_cloud`, `--jurisdiction XX`, a region no provider has) is refused with the nearest
known names instead of answering an empty list as if the market had nothing. The names come
from the region table (`broker.regions`): every market provider, region, country and
jurisdiction (EU for the EU/EEA) the broker can map.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable

from broker import regions


class UnknownName(ValueError):
    """A filter value that names nothing known; the message suggests near names."""


@functools.cache
def _vocabulary() -> dict[str, frozenset[str]]:
    table = regions.load_table()
    providers = frozenset(table.providers())
    infos = [r for p in providers for r in table.regions_of(p)]
    return {
        "provider": providers,
        "region": frozenset(r.region for r in infos),
        "country": frozenset(r.country for r in infos),
        "jurisdiction": frozenset({"EU"} | {r.jurisdiction for r in infos}),
    }


def check(kind: str, values: Iterable[str]) -> None:
    """Raise `UnknownName` for the first of `values` that no known `kind` (provider, region,
    country, jurisdiction; codes compared upper-case) matches.

    Raises:
        UnknownName: the message names the value, near matches and where to look.
    """
    known = _vocabulary()[kind]
    upper = kind in ("country", "jurisdiction")
    for value in values:
        v = value.upper() if upper else value
        if v in known:
            continue
        near = difflib.get_close_matches(v, sorted(known), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        listing = f" Known: {', '.join(sorted(known))}." if len(known) <= 40 else ""
        raise UnknownName(f"unknown {kind} {value[:64]!r}.{hint}{listing}")
