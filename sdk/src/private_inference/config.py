"""`pi login`'s settings: ``$PI_CONFIG_DIR`` or ``$XDG_CONFIG_HOME/private-inference`` (~/.config/…), file
``config.json`` with mode 0600 (it holds an API key)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def config_dir() -> Path:
    if os.environ.get("PI_CONFIG_DIR"):
        return Path(os.environ["PI_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "private-inference"


def config_path() -> Path:
    return config_dir() / "config.json"


def load_config() -> dict[str, Any]:
    try:
        return json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}


def save_config(values: dict[str, Any]) -> Path:
    """Write the config with mode 0600 (the directory 0700), never readable by others in between."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(values, f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path
