"""The runner's resume file: one JSON line per finished item, keyed by a hash of everything that shapes the
result (model, judge, decoding settings) plus a hash of the item itself.

Lines are appended and fsync'ed after each batch, so an interrupted run loses at most the batch in flight; a
torn last line (the process died mid-write) is cut off on the next open.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runtime.artifacts import sha256_json
from runtime.errors import UserError
from runtime.mmtoxicqa.items import Item


def item_hash(item: Item) -> str:
    """Fingerprint of an item's content (prompt, image path, answer...), so an edited item is regenerated."""
    return sha256_json(item.to_json())[:16]


class ResultCache:
    """Finished results of one run directory, filtered to the current settings key."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self._repair_tail()

    def _repair_tail(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def load(self) -> dict[str, dict[str, Any]]:
        """Records written under the current key, by record id (the last one wins)."""
        found: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return found
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{self.path} line {lineno} is corrupt ({e.msg}); delete {self.path} to start "
                                    f"the run over (finished items will be generated again)") from e
                if isinstance(rec, dict) and rec.get("key") == self.key and isinstance(rec.get("id"), str):
                    found[rec["id"]] = rec
        return found

    def append(self, records: list[dict[str, Any]]) -> None:
        """Add records (each gets the current key) durably."""
        with open(self.path, "a", encoding="utf-8", newline="\n") as f:
            for rec in records:
                f.write(json.dumps({**rec, "key": self.key}, sort_keys=True, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
