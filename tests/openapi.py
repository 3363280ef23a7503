"""Where Twilio's OpenAPI excerpt is: `../shared/twilio/` beside the repository when
present (the contract's copy), else the copy kept in `tests/data/` for clones
without it."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_SHARED = REPO.parent / "shared" / "twilio" / "conference-openapi.json"
OPENAPI_PATH = _SHARED if _SHARED.is_file() else REPO / "tests" / "data" / "conference-openapi.json"
