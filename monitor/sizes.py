"""Byte sizes in config ("64KiB", "1MiB", "65536") to int bytes. Pure."""

from __future__ import annotations

import re

UNIT_BYTES = {"": 1, "b": 1, "kib": 1024, "kb": 1000, "mib": 1024**2, "mb": 1000**2}
_SIZE = re.compile(r"\s*([0-9]+)\s*([A-Za-z]*)\s*")


def parse_size(value: str | int) -> int:
    """Bytes in `value`; a bare number is bytes. ValueError says what is accepted."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as '64KiB' or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value}: must not be negative")
        return value
    found = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if found is None or found[2].lower() not in UNIT_BYTES:
        raise ValueError(
            f"invalid size {str(value)[:40]!r}: expected bytes or a number with a unit "
            "(B, KiB, KB, MiB, MB), e.g. '64KiB'"
        )
    return int(found[1]) * UNIT_BYTES[found[2].lower()]
