"""The building blocks of the config models: the strict base model, secret references, value
types and the ``HOST:PORT`` and URL checks."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from bridge.mqtt.errors import InvalidUrl
from bridge.mqtt.urls import BrokerUrl, parse_broker_url

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Qos = Literal[0, 1]
_HOST_PORT = re.compile(r"^(?P<host>[^\s:]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SecretRef(Strict):
    """Where a secret comes from: exactly one of ``env`` or ``file`` (or neither: no secret)."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if self.env and self.file:
            raise ValueError("give either 'env' or 'file', not both")
        return self

    def resolve(self) -> SecretStr | None:
        if self.env:
            value = os.environ.get(self.env)
            if value is None:
                raise ValueError(f"environment variable {self.env} is not set")
            return SecretStr(value)
        if self.file:
            try:
                return SecretStr(self.file.read_text().strip())
            except OSError as exc:
                raise ValueError(f"cannot read secret file {self.file}: {exc.strerror}") from exc
        return None


def check_host_port(value: str) -> str:
    m = _HOST_PORT.match(value)
    if not m or not 0 <= int(m["port"]) <= 65535:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:1883), got {value!r}")
    return value


def parse_url_value(value: str) -> BrokerUrl:
    try:
        return parse_broker_url(value)
    except InvalidUrl as exc:
        raise ValueError(str(exc)) from exc


def split_host_port(value: str) -> tuple[str, int]:
    m = _HOST_PORT.match(value)
    assert m is not None
    return m["host"].strip("[]"), int(m["port"])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
