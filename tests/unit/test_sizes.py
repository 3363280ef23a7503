from __future__ import annotations

import pytest

from monitor.sizes import parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [("65536", 65536), ("64KiB", 65536), ("64 kib", 65536), ("1MiB", 1048576), ("2KB", 2000)],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "64XB", "-1", "1.5KiB", True])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)  # type: ignore[arg-type]
