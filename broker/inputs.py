"""Bounds of user input, shared by every body the API and CLI accept.

Every array and every string a user can send has a bound, so that no request can store or
make the scorer loop over more than a person would ever write (a 50,000-entry residency
list once made every rescoring 14× slower for every team). A value over a bound is a 422
naming the field. The byte size of a whole body is bounded before this, while it streams
(`broker.api.limits`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from broker.domain import Market

#: A name, code or id inside a list (a GPU model, a jurisdiction, a region, a provider).
MAX_TOKEN = 128
#: Items of a list of places (jurisdictions, countries, regions) or providers.
MAX_PLACES = 100
#: GPU models of one request or subscription.
MAX_MODELS = 20

Token = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TOKEN)]
PlaceList = Annotated[list[Token], Field(max_length=MAX_PLACES)]
ModelList = Annotated[list[Token], Field(max_length=MAX_MODELS)]
#: At most every market once (duplicates are harmless but bounded).
MarketList = Annotated[list[Market], Field(max_length=2 * len(Market))]
#: Secrets (webhook URLs, tokens) and free text.
MAX_SECRET = 2048
