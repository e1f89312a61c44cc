"""Cloud -> gateway messages (downlink): dispatch by topic. Commands are parsed by
:mod:`bridge.protocol.commands`; the config topic's messages go on as they are, and so do the
messages of file downloads (``files/down/{id}/manifest|chunk``). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.mqtt.types import Message
from bridge.protocol.commands import REJECT_REASONS, Command, CommandLimits, CommandRejected, parse_command
from bridge.protocol.topics import CloudTopics

__all__ = ["REJECT_REASONS", "CommandHandler", "CommandLimits", "DownlinkRouter", "FileHandler", "MessageCallback"]

CommandHandler = Callable[[Command | CommandRejected], None]
MessageCallback = Callable[[Message], None]
FileHandler = Callable[[str, str, bytes], None]
"""A download message: (file id as in the topic, ``manifest`` or ``chunk``, payload)."""


class DownlinkRouter:
    """Dispatches messages from the cloud subscription by topic: commands are parsed and handed to
    ``on_command``; the config topic goes to ``on_config`` as the raw message. An empty message on
    a command topic is how an operator clears a retained one: it is counted in ``cleared`` and
    goes nowhere (it has no id, so there is nobody to answer). Receipts for uploaded files go to
    ``on_file_receipt`` as raw messages; download messages go to ``on_file`` with the file id and
    part their topic names. Anything else is counted in
    ``ignored``. Used as the uplink's ``on_message``; runs on the event loop."""

    def __init__(self, topics: CloudTopics, limits: CommandLimits, *, clock: Callable[[], float],
                 on_command: CommandHandler | None = None, on_config: MessageCallback | None = None,
                 on_file_receipt: MessageCallback | None = None, on_file: FileHandler | None = None) -> None:
        self._commands_prefix = f"{topics.prefix}/commands/"
        self._files_down = f"{topics.prefix}/files/down/"
        self._config = topics.config
        self._limits = limits
        self._clock = clock
        self.on_command = on_command
        self.on_config = on_config
        self.on_file_receipt = on_file_receipt  # receipts of the receiver of uploads: {prefix}/files/up/+/receipt
        self._receipts = (f"{topics.prefix}/files/up/", "/receipt")
        self.on_file = on_file
        self.ignored = 0
        self.cleared = 0

    def subscriptions(self) -> list[tuple[str, int]]:
        """The cloud filters to subscribe to (QoS 1) for the handlers that are set."""
        subs: list[tuple[str, int]] = []
        if self.on_command is not None:
            subs.append((f"{self._commands_prefix}#", 1))
        if self.on_config is not None:
            subs.append((self._config, 1))
        if self.on_file_receipt is not None:
            subs.append((f"{self._receipts[0]}+{self._receipts[1]}", 1))
        if self.on_file is not None:
            subs += [(f"{self._files_down}+/manifest", 1), (f"{self._files_down}+/chunk", 1)]
        return subs

    def __call__(self, msg: Message) -> None:
        topic = msg.topic
        if self.on_command is not None and (topic.startswith(self._commands_prefix)
                                            or topic == self._commands_prefix[:-1]):
            if not msg.payload:
                self.cleared += 1
                return
            suffix = topic[len(self._commands_prefix):]
            self.on_command(parse_command(suffix, msg.payload, self._clock(), self._limits, retained=msg.retain))
        elif topic == self._config and self.on_config is not None:
            self.on_config(msg)
        elif self.on_file_receipt is not None and topic.startswith(self._receipts[0]) \
                and topic.endswith(self._receipts[1]):
            self.on_file_receipt(msg)
        elif self.on_file is not None and topic.startswith(self._files_down) and _file_part(topic, self._files_down):
            file_id, _, part = topic[len(self._files_down):].partition("/")
            self.on_file(file_id, part, msg.payload)
        else:
            self.ignored += 1


def _file_part(topic: str, head: str) -> bool:
    parts = topic[len(head):].split("/")
    return len(parts) == 2 and parts[1] in ("manifest", "chunk")
