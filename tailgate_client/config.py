"""Where the server is and which key to use: arguments, then environment, then a config file.

Client(base_url=…, stream_url=…, api_key=…)     explicit (the CLI's --url, --stream-url,
      │ unset                                    --api-key)
      ▼
TAILGATE_URL, TAILGATE_STREAM_URL, TAILGATE_API_KEY
      │ unset
      ▼
the config file: $TAILGATE_CONFIG, else $XDG_CONFIG_HOME/tailgate/config, else
~/.config/tailgate/config (INI, like st2's ~/.st2/config):

    [general]
    base_url = https://tailgate.example.com
    [stream]
    url = https://stream.example.com      ; SSE and plain-text output, if elsewhere
    [credentials]
    api_key = tg_…
      │ unset
      ▼
http://127.0.0.1:8000, streams at the base URL, no key
"""

import configparser
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"

# (environment variable, config section, config option) for each setting.
SOURCES = {
    "base_url": ("TAILGATE_URL", "general", "base_url"),
    "stream_url": ("TAILGATE_STREAM_URL", "stream", "url"),
    "api_key": ("TAILGATE_API_KEY", "credentials", "api_key"),
}


class ConfigError(ValueError):
    """The config file exists but cannot be read as INI."""


@dataclass(frozen=True)
class Settings:
    base_url: str
    stream_url: str
    api_key: str | None
    config_path: Path


def config_path() -> Path:
    """The config file to read (it need not exist)."""
    if explicit := os.environ.get("TAILGATE_CONFIG"):
        return Path(explicit).expanduser()
    home = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(home) / "tailgate" / "config"


def _read_file(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as exc:
        raise ConfigError(f"{path}: {exc.message}") from None
    return parser


def resolve(
    base_url: str | None = None, stream_url: str | None = None, api_key: str | None = None
) -> Settings:
    """Each setting from the first source that has it (see the module docstring)."""
    path = config_path()
    parser = _read_file(path)
    given = {"base_url": base_url, "stream_url": stream_url, "api_key": api_key}
    found: dict[str, str | None] = {}
    for name, (variable, section, option) in SOURCES.items():
        found[name] = (
            given[name] or os.environ.get(variable) or parser.get(section, option, fallback=None)
        )
    base = (found["base_url"] or DEFAULT_URL).rstrip("/")
    stream = (found["stream_url"] or base).rstrip("/")
    return Settings(base, stream, found["api_key"] or None, path)
