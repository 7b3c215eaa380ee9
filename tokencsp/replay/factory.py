"""Choosing a replay cache or serial counter backend from one string (``--replay-db``, ``--serial-db``).

A libpq URI (``postgresql://…``, ``postgres://…``) or keyword string
(``service=fleet``, ``host=db dbname=tokencsp``) selects PostgreSQL; anything
else is an SQLite file path.  No string given: ``$TOKENCSP_REPLAY_DB``
(``$TOKENCSP_SERIAL_DB``), else the local default.
"""

from __future__ import annotations

import os

from ..errors import ConfigError
from .base import ReplayCache
from .paths import ENV_REPLAY_DB
from .postgres import PostgresReplayCache, PostgresSerialCounter, dsn_has_password, is_postgres_dsn
from .serial import SerialCounter
from .sqlite import SQLiteReplayCache

__all__ = ["open_cache", "open_serial_counter", "draw_serial", "refuse_password_on_command_line", "ENV_SERIAL_DB"]

ENV_SERIAL_DB = "TOKENCSP_SERIAL_DB"


def open_cache(target: str | os.PathLike[str] | None = None) -> ReplayCache:
    """The replay cache ``target`` names; see the module docstring."""
    if target is None:
        target = os.environ.get(ENV_REPLAY_DB) or None
    if isinstance(target, str) and is_postgres_dsn(target):
        return PostgresReplayCache(target)
    return SQLiteReplayCache(target)


def open_serial_counter(key_id: bytes, target: str | None = None) -> SerialCounter | PostgresSerialCounter:
    """The sender serial counter for ``key_id``: PostgreSQL when ``target`` (or $TOKENCSP_SERIAL_DB)
    is a PostgreSQL DSN, else the per-key file in the state directory."""
    if target is None:
        target = os.environ.get(ENV_SERIAL_DB) or None
    if target is None:
        return SerialCounter.for_key(key_id)
    if not is_postgres_dsn(target):
        raise ConfigError(f"serial database {target!r} is not a PostgreSQL connection string "
                          "(postgresql://… or service=NAME); without one, serials come from a local file")
    return PostgresSerialCounter(target, key_id)


def draw_serial(key_id: bytes, target: str | None = None) -> int:
    """One serial number for ``key_id`` from the counter ``target`` names (see ``open_serial_counter``)."""
    counter = open_serial_counter(key_id, target)
    if isinstance(counter, PostgresSerialCounter):
        with counter:
            return counter.next()
    return counter.next()


def refuse_password_on_command_line(target: str | os.PathLike[str] | None, option: str) -> None:
    """A password inside a DSN on argv is readable by every local user in /proc/PID/cmdline."""
    if isinstance(target, str) and is_postgres_dsn(target) and dsn_has_password(target):
        raise ConfigError(f"{option}: a password in the connection string on the command line is visible to "
                          "other users; put it in ~/.pgpass (PGPASSFILE), PGPASSWORD or a service file, "
                          f"or the whole string in {ENV_REPLAY_DB}/{ENV_SERIAL_DB}")

