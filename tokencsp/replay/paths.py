"""Where tokencsp keeps its state by default (XDG), created only when used."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ReplayCacheError

__all__ = ["ENV_REPLAY_DB", "default_replay_db_path", "default_state_dir", "make_parent"]

ENV_REPLAY_DB = "TOKENCSP_REPLAY_DB"


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/tokencsp, else ~/.local/state/tokencsp (not created)."""
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"  # XDG: relative is invalid
    return base / "tokencsp"


def make_parent(path: Path) -> Path:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ReplayCacheError(f"cannot create {path.parent}: {exc.strerror}") from None
    return path


def default_replay_db_path() -> Path:
    """$TOKENCSP_REPLAY_DB, else <state dir>/replay.sqlite3; the parent is created 0700."""
    env = os.environ.get(ENV_REPLAY_DB)
    return make_parent(Path(env) if env else default_state_dir() / "replay.sqlite3")
