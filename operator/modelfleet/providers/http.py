"""An aiohttp session a provider either borrows or creates (and then closes) itself."""

from __future__ import annotations

import aiohttp


class OwnedSession:
    """Base for providers: `_get_session()` lazily opens a session unless one was given."""

    def __init__(self, session: aiohttp.ClientSession | None, timeout_seconds: float) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session = session
        self._own_session = session is None

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
            self._own_session = True
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None and not self._session.closed:
            await self._session.close()
