"""The marker selection of conftest: what ``-m`` selects is run, not skipped."""

import pytest
from conftest import pytest_collection_modifyitems


class _Item:
    def __init__(self, *marks):
        self.marks, self.added = set(marks), []

    def get_closest_marker(self, name):
        return name if name in self.marks else None

    def add_marker(self, marker):
        self.added.append(marker)


class _Config:
    def __init__(self, markexpr):
        self.option = type("Option", (), {"markexpr": markexpr})()


@pytest.mark.parametrize("markexpr,skipped", [
    ("", True), ("not browser", True), ("slow", False), ("slow and not full_size", False), ("full_size", False),
])
def test_slow_tests_run_when_selected(markexpr, skipped, monkeypatch):
    monkeypatch.delenv("RUN_SLOW", raising=False)
    full, slow, plain = _Item("slow", "full_size"), _Item("slow"), _Item()
    pytest_collection_modifyitems(_Config(markexpr), [full, slow, plain])
    assert bool(full.added) == skipped and bool(slow.added) == skipped
    assert plain.added == []
