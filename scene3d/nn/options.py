"""Named options of the nn layers: one lookup with one error for every name -> value table."""
from __future__ import annotations

from typing import Mapping, TypeVar

T = TypeVar("T")


def choose(table: Mapping[str, T], name: str, what: str) -> T:
    """``table[name]``; a name not in the table raises ValueError naming ``what`` and the known names."""
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; expected one of {sorted(table)}")
    return table[name]
