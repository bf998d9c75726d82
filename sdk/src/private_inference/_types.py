"""Result objects: JSON objects with attribute access (``completion.choices[0].message.content``)."""
from __future__ import annotations

from typing import Any


class Obj(dict):
    """A dict whose keys are also attributes; nested dicts and lists of dicts are wrapped too.

    ``obj.missing`` is None (as optional fields are in the OpenAI SDK); ``obj["missing"]`` raises."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def to_dict(self) -> dict:
        return _plain(self)

    def __repr__(self) -> str:
        kind = self.get("object") or "Obj"
        return f"<{kind} {dict.__repr__(self)}>"


def wrap(value: Any) -> Any:
    if isinstance(value, dict) and not isinstance(value, Obj):
        return Obj({k: wrap(v) for k, v in value.items()})
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
