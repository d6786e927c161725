"""Fill the catalogue: walk each project's listings with the service credential, or import.

A walk commits each page together with where it got to, so an interrupted sync resumes at
the page after the last committed one. A walk of one project's listing that completes
removes the records of that project (and kind) it did not list: they are gone upstream.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlencode, urlsplit

import jmespath
import orjson
import urllib3
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway.catalogue.config import KIND, CatalogueSource
from gateway.catalogue.store import CatalogueStore, Placement
from gateway.config import Config
from gateway.db.models import CatalogueRun
from gateway.upstream.forward import tls_options

IMPORT_BATCH = 5000
MAX_PAGE_BYTES = 64 * 1024 * 1024
MAX_ID_LENGTH = 1024


class CatalogueError(Exception):
    """A sync or import that cannot go on; the message says where and why."""


@dataclass
class RunSummary:
    run_id: int
    command: str
    status: str = "running"
    resumed: bool = False
    seen: int = 0
    added: int = 0
    moved: int = 0
    gone: int = 0
    pages: int = 0
    walks: dict[str, dict[str, Any]] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run_id,
            "command": self.command,
            "status": self.status,
            "resumed": self.resumed,
            "seen": self.seen,
            "added": self.added,
            "moved": self.moved,
            "gone": self.gone,
            "pages": self.pages,
            "walks": self.walks,
            "catalogue": self.kinds,
            "error": self.error,
        }


Progress = Callable[[str, int], None]


def _now() -> datetime:
    return datetime.now(UTC)


def _scalar(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH:
        return value
    return None


class _Runs:
    """The catalogue_runs row of one sync or import."""

    def __init__(self, db: Engine, upstream: str) -> None:
        self.db = db
        self.upstream = upstream

    def open(
        self, command: str, actor: str, scope: dict[str, Any], *, resume: bool
    ) -> tuple[int, dict[str, Any], bool]:
        """A new run, or the last unfinished one of the same scope (to resume it)."""
        scope_text = orjson.dumps(scope, option=orjson.OPT_SORT_KEYS).decode()
        with Session(self.db) as session, session.begin():
            if resume:
                last = session.scalars(
                    select(CatalogueRun)
                    .where(
                        CatalogueRun.upstream == self.upstream,
                        CatalogueRun.command == command,
                    )
                    .order_by(CatalogueRun.id.desc())
                    .limit(1)
                ).first()
                if last is not None and last.status != "done" and last.scope == scope_text:
                    last.status = "running"
                    last.error = None
                    return last.id, orjson.loads(last.progress), True
            run = CatalogueRun(
                upstream=self.upstream,
                command=command,
                actor=actor,
                started_at=_now(),
                status="running",
                scope=scope_text,
                progress="{}",
                seen=0,
                added=0,
                moved=0,
                gone=0,
            )
            session.add(run)
            session.flush()
            return run.id, {}, False

    @staticmethod
    def save(connection: Any, summary: RunSummary, progress: dict[str, Any]) -> None:
        connection.execute(
            CatalogueRun.__table__.update()
            .where(CatalogueRun.id == summary.run_id)
            .values(
                progress=orjson.dumps(progress).decode(),
                seen=summary.seen,
                added=summary.added,
                moved=summary.moved,
                gone=summary.gone,
            )
        )

    def close(self, summary: RunSummary) -> None:
        with self.db.begin() as connection:
            connection.execute(
                CatalogueRun.__table__.update()
                .where(CatalogueRun.id == summary.run_id)
                .values(
                    status=summary.status,
                    finished_at=_now(),
                    error=summary.error,
                    seen=summary.seen,
                    added=summary.added,
                    moved=summary.moved,
                    gone=summary.gone,
                )
            )


# --- sync ---------------------------------------------------------------------------------


class _Listing:
    """One source's pages for one project, fetched with the upstream's service credential."""

    def __init__(self, config: Config, source: CatalogueSource, project: str) -> None:
        self.config = config
        self.source = source
        self.project = project
        upstream = urlsplit(config.upstream.url)
        self.origin = f"{upstream.scheme}://{upstream.netloc}"
        self.base_path = upstream.path.rstrip("/")
        self.records = jmespath.compile(source.records)
        self.record_id = jmespath.compile(source.record_id)
        self.record_task = jmespath.compile(source.record_task) if source.record_task else None
        self.next_link = jmespath.compile(source.next) if source.next else None

    def first_cursor(self) -> dict[str, Any]:
        style = self.source.pagination
        if style == "page":
            return {"page": 1}
        if style == "offset":
            return {"offset": 0}
        return {"url": None}

    def target(self, cursor: dict[str, Any]) -> str:
        source = self.source
        if cursor.get("url"):
            return cursor["url"]
        query = list(source.query.items())
        if source.pagination == "page":
            assert source.page_param is not None
            query.append((source.page_param, str(cursor["page"])))
            if source.page_size_param:
                query.append((source.page_size_param, str(source.page_size)))
        elif source.pagination == "offset":
            assert source.offset_param and source.limit_param
            query.append((source.offset_param, str(cursor["offset"])))
            query.append((source.limit_param, str(source.page_size)))
        path = self.base_path + source.path.replace("{project}", self.project)
        return path + (f"?{urlencode(query)}" if query else "")

    def fetch(self, http: urllib3.PoolManager, cursor: dict[str, Any]) -> tuple[int, Any]:
        target = self.target(cursor)
        try:
            response = http.request(
                "GET",
                self.origin + target,
                headers={**self.config.upstream.headers, "Accept": "application/json"},
                redirect=False,
                retries=urllib3.Retry(total=3, backoff_factor=0.5, status_forcelist=(502, 503)),
                preload_content=False,
            )
            raw = response.read(MAX_PAGE_BYTES + 1)
            response.release_conn()
        except urllib3.exceptions.HTTPError as error:
            raise CatalogueError(
                f"{target}: the dataset service cannot be reached: {error}"
            ) from None
        if len(raw) > MAX_PAGE_BYTES:
            raise CatalogueError(f"{target}: a page larger than {MAX_PAGE_BYTES} bytes")
        if response.status != 200:
            return response.status, None
        try:
            return 200, orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise CatalogueError(f"{target}: the answer is not JSON") from None

    def placements(self, body: Any) -> dict[str, Placement]:
        selected = self.records.search(body)
        if selected is None:
            selected = []
        if not isinstance(selected, list):
            selected = [selected]
        found: dict[str, Placement] = {}
        for item in selected:
            record_id = _scalar(self.record_id.search(item))
            if record_id is None:
                raise CatalogueError(
                    f"{self.source.path} (project {self.project}): a record without a usable"
                    f" id ({self.source.record_id})"
                )
            task = _scalar(self.record_task.search(item)) if self.record_task else None
            found[record_id] = Placement(self.project, task)
        return found

    def next_cursor(self, cursor: dict[str, Any], body: Any, count: int) -> dict[str, Any] | None:
        source = self.source
        if source.pagination == "none" or count == 0:
            return None
        if source.pagination == "page":
            return {"page": cursor["page"] + 1} if count >= source.page_size else None
        if source.pagination == "offset":
            return {"offset": cursor["offset"] + count} if count >= source.page_size else None
        assert self.next_link is not None
        link = self.next_link.search(body)
        if not link or not isinstance(link, str):
            return None
        parts = urlsplit(link)
        if parts.scheme or parts.netloc:
            # A next link elsewhere would carry the service credential to another host.
            if f"{parts.scheme}://{parts.netloc}" != self.origin:
                raise CatalogueError(f"{source.path}: a next link to another host: {link[:200]}")
            link = parts.path + (f"?{parts.query}" if parts.query else "")
        elif not link.startswith("/"):
            raise CatalogueError(f"{source.path}: a relative next link: {link[:200]}")
        return {"url": link}


def sync(
    db: Engine,
    config: Config,
    *,
    projects: list[str],
    kinds: list[str] | None = None,
    actor: str,
    restart: bool = False,
    progress: Progress | None = None,
) -> RunSummary:
    """Walk every source for every project; resumes the last unfinished run of this scope."""
    catalogue = config.catalogue
    sources = [s for s in catalogue.sources if kinds is None or s.kind in kinds]
    if not sources:
        raise CatalogueError("no [[catalogue.sources]] to walk (or none of the kinds asked for)")
    if not projects:
        raise CatalogueError("no projects to walk: give --project or [catalogue] projects")
    store = CatalogueStore(db, catalogue.upstream)
    runs = _Runs(db, catalogue.upstream)
    scope = {"projects": sorted(projects), "kinds": sorted({s.kind for s in sources})}
    run_id, state, resumed = runs.open("sync", actor, scope, resume=not restart)
    summary = RunSummary(run_id, "sync", resumed=resumed)
    for walk in state.values():
        for name in ("seen", "added", "moved", "gone", "pages"):
            setattr(summary, name, getattr(summary, name) + walk.get(name, 0))
    try:
        for source in sources:
            for project in projects:
                key = f"{source.kind}|{project}"
                walk = state.setdefault(key, {"done": False, "pages": 0, "seen": 0})
                if not walk["done"]:
                    _walk(
                        db, store, config, source, project, run_id, walk, state, summary, progress
                    )
                summary.walks[key] = {k: v for k, v in walk.items() if k != "cursor"}
        summary.status = "done"
    except CatalogueError as error:
        summary.status = "failed"
        summary.error = str(error)
    finally:
        with db.begin() as connection:
            for kind in scope["kinds"]:
                summary.kinds[kind] = store.recount(connection, kind)
        runs.close(summary)
    return summary


def _walk(
    db: Engine,
    store: CatalogueStore,
    config: Config,
    source: CatalogueSource,
    project: str,
    run_id: int,
    walk: dict[str, Any],
    state: dict[str, Any],
    summary: RunSummary,
    progress: Progress | None,
) -> None:
    listing = _Listing(config, source, project)
    cursor = walk.get("cursor") or listing.first_cursor()
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(
            connect=config.upstream.connect_timeout, read=config.upstream.read_timeout
        ),
        maxsize=1,
        **tls_options(config.upstream),
    )
    label = f"{source.kind} of project {project}"
    while True:
        if walk["pages"] >= source.max_pages:
            raise CatalogueError(f"{label}: more than {source.max_pages} pages")
        status, body = listing.fetch(http, cursor)
        if status == source.end_status:
            placements: dict[str, Placement] = {}  # past the last page, or none at all
        elif status != 200:
            raise CatalogueError(
                f"{label}: {listing.target(cursor)} answered {status}"
                + (" (does the project exist upstream?)" if status == 404 else "")
            )
        else:
            placements = listing.placements(body)
        next_cursor = listing.next_cursor(cursor, body, len(placements)) if placements else None
        with db.begin() as connection:
            counts = store.upsert(connection, source.kind, placements, source="sync", run_id=run_id)
            walk["pages"] += 1
            walk["seen"] += len(placements)
            walk["added"] = walk.get("added", 0) + counts.added
            walk["moved"] = walk.get("moved", 0) + counts.moved
            summary.pages += 1
            summary.seen += len(placements)
            summary.added += counts.added
            summary.moved += counts.moved
            if next_cursor is None:
                gone = store.delete_unseen(connection, source.kind, project, run_id)
                walk["gone"] = gone
                summary.gone += gone
                walk["done"] = True
                walk.pop("cursor", None)
            else:
                walk["cursor"] = next_cursor
            _Runs.save(connection, summary, state)
        if progress is not None:
            progress(label, len(placements))
        if next_cursor is None:
            return
        cursor = next_cursor


# --- import -------------------------------------------------------------------------------


def _import_rows(
    handle: IO[bytes], name: str, default_kind: str
) -> Iterator[tuple[str, str, Placement]]:
    """(kind, record id, placement) per line of a CSV (with a header) or JSON Lines file."""
    if name.endswith((".jsonl", ".ndjson")):
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise CatalogueError(f"line {number}: not a JSON object") from None
            if not isinstance(item, dict):
                raise CatalogueError(f"line {number}: not a JSON object")
            yield _import_row(item, number, default_kind)
        return
    if not name.endswith(".csv"):
        raise CatalogueError("the file must be .csv (with a header) or .jsonl")
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
    reader = csv.DictReader(text)
    if not reader.fieldnames or not {"record_id", "project"} <= set(reader.fieldnames):
        raise CatalogueError("the CSV header must name record_id and project (task, kind optional)")
    for number, item in enumerate(reader, start=2):
        yield _import_row(item, number, default_kind)


def _import_row(item: dict[str, Any], number: int, default_kind: str) -> tuple[str, str, Placement]:
    record_id = _scalar(item.get("record_id"))
    project = _scalar(item.get("project"))
    if record_id is None or project is None:
        raise CatalogueError(f"line {number}: record_id and project are required")
    task = _scalar(item.get("task")) if item.get("task") not in (None, "") else None
    kind = item.get("kind") or default_kind
    if not isinstance(kind, str) or not KIND.match(kind):
        raise CatalogueError(f"line {number}: bad kind {str(kind)[:40]!r}")
    return kind, record_id, Placement(project, task)


def import_file(
    db: Engine,
    config: Config,
    handle: IO[bytes],
    name: str,
    *,
    actor: str,
    default_kind: str = "record",
    progress: Progress | None = None,
) -> RunSummary:
    """Place every record the file lists (added or moved); nothing is deleted."""
    store = CatalogueStore(db, config.catalogue.upstream)
    runs = _Runs(db, config.catalogue.upstream)
    run_id, _, _ = runs.open("import", actor, {"file": name}, resume=False)
    summary = RunSummary(run_id, "import")
    kinds: set[str] = set()
    batch: dict[str, dict[str, Placement]] = {}

    def flush() -> None:
        with db.begin() as connection:
            for kind, placements in batch.items():
                counts = store.upsert(connection, kind, placements, source="import", run_id=None)
                summary.added += counts.added
                summary.moved += counts.moved
                summary.seen += len(placements)
                if progress is not None:
                    progress(kind, len(placements))
            _Runs.save(connection, summary, {})
        batch.clear()

    try:
        pending = 0
        for kind, record_id, placement in _import_rows(handle, name, default_kind):
            kinds.add(kind)
            batch.setdefault(kind, {})[record_id] = placement
            pending += 1
            if pending >= IMPORT_BATCH:
                flush()
                pending = 0
        flush()
        summary.status = "done"
    except (CatalogueError, UnicodeDecodeError, csv.Error) as error:
        summary.status = "failed"
        summary.error = str(error)
    finally:
        with db.begin() as connection:
            for kind in sorted(kinds):
                summary.kinds[kind] = store.recount(connection, kind)
        runs.close(summary)
    return summary
