"""Streamed downloads: cut by a lock from any thread, ended visibly when they break.

A download that stops short must not look complete to the client, and its upstream
connection must be settled whatever happens to the client.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
from collections.abc import Callable
from typing import NoReturn

from gateway.identity import Principal
from gateway.upstream.forward import STREAM_CHUNK, UpstreamError, UpstreamResponse

log = logging.getLogger(__name__)


class DownloadCutOff(ConnectionResetError):
    """A download that ended early (a lock, a broken upstream); the connection is dropped.

    A connection reset is what the WSGI server expects from a vanished peer: it closes
    the connection without a final chunk and without logging a traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(errno.ECONNRESET, message)


class Download:
    """A download in progress, so a lock can cut it from outside the request thread."""

    def __init__(
        self, principal: Principal, project: str | None, response: UpstreamResponse
    ) -> None:
        self.principal = principal
        self.project = project
        self.response = response
        self.cut_off = False

    def cut(self) -> None:
        self.cut_off = True
        # Unblocks a read that is waiting on a slow upstream; the loop then ends.
        with contextlib.suppress(Exception):
            self.response.shutdown()


class ActiveDownloads:
    def __init__(self) -> None:
        self._downloads: dict[int, Download] = {}
        self._lock = threading.Lock()

    def add(self, download: Download) -> None:
        with self._lock:
            self._downloads[id(download)] = download

    def remove(self, download: Download) -> None:
        with self._lock:
            self._downloads.pop(id(download), None)

    def snapshot(self) -> list[Download]:
        with self._lock:
            return list(self._downloads.values())


class GuardedStream:
    """The body of one download as a WSGI iterable.

    A class rather than a generator: the server calls `close()` even when it never
    iterated (a HEAD, a client gone), and a generator that never started would not run
    its cleanup, leaving the upstream connection neither returned nor closed.
    """

    def __init__(
        self,
        download: Download,
        downloads: ActiveDownloads,
        *,
        locked: Callable[[Download], bool],
        ended_early: Callable[[str], None],
        label: str,
    ) -> None:
        self._download = download
        self._downloads = downloads
        self._locked = locked
        self._ended_early = ended_early
        self._label = label
        self._chunks = download.response.stream(STREAM_CHUNK)
        self._first: bytes | None = None
        self._closed = False
        downloads.add(download)

    def prefetch(self) -> None:
        """Wait for the first piece before anything is sent.

        An upstream that fails before its first byte then gets a clean JSON error, not a
        connection closed without a status line (which clients take for a stale
        keep-alive connection and retry). Raises UpstreamError.
        """
        try:
            self._first = next(self._chunks, b"")
        except UpstreamError:
            self.close()
            raise

    def __iter__(self) -> GuardedStream:
        return self

    def __next__(self) -> bytes:
        download = self._download
        if self._first is not None:
            chunk, self._first = self._first, None
            if chunk:
                return self._checked(chunk)
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self.close()
            raise
        except UpstreamError as error:
            if download.cut_off:
                self._end("stream_cut:locked")
            log.warning("download %s: upstream broke off (%s)", self._label, error.reason)
            self._end(f"stream_broken:{error.reason}")
        return self._checked(chunk)

    def _checked(self, chunk: bytes) -> bytes:
        download = self._download
        if download.cut_off or self._locked(download):
            download.cut_off = True
            self._end("stream_cut:locked")
        return chunk

    def _end(self, reason: str) -> NoReturn:
        """Record why the download stopped short, then drop the client's connection."""
        self.close()
        self._ended_early(reason)
        # Ending the body normally would make a truncated download look complete;
        # a reset makes the server drop the connection without the final chunk.
        raise DownloadCutOff(f"download {self._label} ended early: {reason}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._downloads.remove(self._download)
        self._download.response.close()
