"""Job indexes as the Job controller writes them (`completedIndexes`, `failedIndexes`) and as the operator writes
`status.countedIndexes` in the same format, which the API reads: one parser and one writer for all of them."""

from __future__ import annotations


def expand_ranges(text: str | None) -> set[int]:
    """'0-2,5' -> {0, 1, 2, 5} (the format of Job status completedIndexes/failedIndexes)."""
    out: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        out.update(range(int(low), int(high or low) + 1))
    return out


def compress_ranges(indexes: set[int] | list[int]) -> str:
    """{0, 1, 2, 5} -> '0-2,5'."""
    parts: list[str] = []
    ordered = sorted(set(indexes))
    start: int | None = None
    previous: int | None = None
    for index in [*ordered, None]:
        if start is not None and previous is not None and (index is None or index != previous + 1):
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            start = None
        if index is not None and start is None:
            start = index
        previous = index
    return ",".join(parts)
