"""Which Twilio host to call: `base_url`, else edge and region as Twilio's SDKs resolve them.

twilio-python builds `api.{edge}.{region}.twilio.com` and assumes region `us1`
for an edge given alone; we do the same. A region given alone made the SDK use
`api.{region}.twilio.com`, which Twilio retired on 2026-04-28; Twilio's newer
SDKs send it to the region's default edge instead, so we do that for the three
regions Twilio processes data in, and refuse any other region without an edge.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

DEFAULT_BASE_URL = "https://api.twilio.com"
EDGE_ONLY_REGION = "us1"
DEFAULT_EDGES = {"us1": "ashburn", "ie1": "dublin", "au1": "sydney"}
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def api_origin(edge: str | None, region: str | None, base_url: str | None = None) -> str:
    """The API origin: an explicit `base_url`, else `api.{edge}.{region}`, else `api`."""
    if base_url:
        return normalise_base_url(base_url)
    edge, region = (edge or "").lower() or None, (region or "").lower() or None
    if edge is None and region is None:
        return DEFAULT_BASE_URL
    if region is None:
        region = EDGE_ONLY_REGION
    for label in (edge, region):
        if label is not None and not _LABEL_RE.fullmatch(label):
            raise ValueError(f"not a valid Twilio edge or region name: {label!r}")
    if edge is None:
        edge = default_edge(region)
    return f"https://api.{edge}.{region}.twilio.com"


def default_edge(region: str) -> str:
    """The edge a region given alone is reached through; ValueError when there is none."""
    try:
        return DEFAULT_EDGES[region.lower()]
    except KeyError:
        raise ValueError(
            f"Twilio region {region!r} needs an edge too: api.{{region}}.twilio.com stopped "
            f"working on 2026-04-28, and only {', '.join(DEFAULT_EDGES)} have a default edge"
        ) from None


def normalise_base_url(url: str) -> str:
    """`scheme://host[:port]` only: paging URIs are host-relative, credentials go in headers."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ValueError("base_url must not carry credentials")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be http(s)://host[:port], got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"base_url must have no path, query or fragment, got {url!r}")
    return f"{parts.scheme}://{parts.netloc}"
