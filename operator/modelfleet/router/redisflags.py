"""The checks every redis:// store flag of the router shares (sticky assets, client spend):
a URL that names a host and never a password, and a password file that can be read."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit


def checked_redis_flag(
    flag: str, url: str, others: str, password_flag: str, password_file: str | None
) -> Path | None:
    """The password file's path (None without one). Raises ValueError naming the flag.
    `others` lists the flag's non-Redis values for the message."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"{flag}: {url!r} is not {others} or redis://HOST:PORT/DB")
    if parts.password is not None:
        # Secrets by reference only: a URL ends up in args, logs and `ps`.
        raise ValueError(f"{flag}: the URL must not carry a password; use {password_flag}")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"{flag}: database {db!r} is not a number")
    if not password_file:
        return None
    path = Path(password_file)
    try:
        readable = bool(path.read_text().strip())
    except OSError as exc:
        raise ValueError(f"{password_flag} {password_file}: {exc.strerror}") from None
    if not readable:
        raise ValueError(f"{password_flag} {password_file}: empty")
    # Checked here so a missing Secret stops the router at start; read again per connection.
    return path
