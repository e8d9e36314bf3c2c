"""Which originals the collector deletes (operator/gc.py `orphans`, a pure function)."""

from __future__ import annotations

import datetime

from kresize_operator.gc import orphans

NOW = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC)
HOUR = datetime.timedelta(hours=1)


def test_only_unreferenced_originals_older_than_the_grace_period_go():
    originals = [("originals/old-unused.png", NOW - 2 * HOUR), ("originals/old-used.png", NOW - 2 * HOUR),
                 ("originals/new-unused.png", NOW - HOUR / 2), ("originals/exactly-grace.png", NOW - HOUR)]
    assert orphans(originals, {"originals/old-used.png"}, NOW, HOUR) == ["originals/old-unused.png"]


def test_nothing_goes_when_everything_is_referenced_or_young():
    assert orphans([("originals/a.png", NOW - 10 * HOUR)], {"originals/a.png"}, NOW, HOUR) == []
    assert orphans([("originals/a.png", NOW)], set(), NOW, HOUR) == []
