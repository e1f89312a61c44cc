"""The file-transfer topics of one gateway (docs/PROTOCOL.md, "File transfer")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bridge.protocol.files import Direction, check_file_id

__all__ = ["FileTopics"]


@dataclass(frozen=True)
class FileTopics:
    """The file-transfer topics of one gateway under its cloud prefix (``edge/{gw}`` by default)."""

    prefix: str

    def manifest(self, direction: Direction, file_id: str) -> str:
        return f"{self.prefix}/files/{direction}/{check_file_id(file_id)}/manifest"

    def chunk(self, direction: Direction, file_id: str) -> str:
        return f"{self.prefix}/files/{direction}/{check_file_id(file_id)}/chunk"

    def receipt(self, direction: Direction, file_id: str) -> str:
        return f"{self.prefix}/files/{direction}/{check_file_id(file_id)}/receipt"

    def filter(self, direction: Direction, part: Literal["manifest", "chunk", "receipt"]) -> str:
        return f"{self.prefix}/files/{direction}/+/{part}"

    def parse(self, topic: str) -> tuple[Direction, str, str] | None:
        """``(direction, file id, part)`` of a file topic under this prefix, or None."""
        head = f"{self.prefix}/files/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head):].split("/")
        if len(parts) != 3 or parts[0] not in ("up", "down") or parts[2] not in ("manifest", "chunk", "receipt"):
            return None
        direction: Direction = "up" if parts[0] == "up" else "down"
        return direction, parts[1], parts[2]
