"""File storage of list versions, the allow-list, parties and the last re-screen's hits.

Layout under ``<data_dir>/aml/``::

    lists/manifest.json            every version's metadata, the current version per source,
                                   and the history of activations
    lists/versions/<id>.jsonl      one immutable version: a header line, then one entity a line
    lists/.lock                    held (flock) while an import writes
    allow_list.jsonl               cleared false positives, one a line (append-only)
    parties.jsonl                  customers to re-screen when a list changes (written by others)
    rescreen_hits.json             hits of the last re-screen, to report only new ones

Writes go to a temporary file in the same directory, are fsynced, then renamed over the
target, so a crash leaves either the old or the new file and never half of one. A version file
is never rewritten once it exists; a version's ``entities_sha256`` is checked on every load.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paykeep.aml.screening.errors import (
    ListStoreCorrupt,
    ScreeningAllowListInvalid,
    ScreeningInputError,
    ScreeningPartiesInvalid,
)
from paykeep.aml.screening.model import ListEntity

MANIFEST_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class ListVersion:
    """Metadata of one imported list version (immutable)."""

    version_id: str
    source: str
    list_format: str
    content_sha256: str
    entities_sha256: str
    imported_at: str
    entity_count: int
    file_name: str

    def to_json(self) -> dict[str, Any]:
        return {
            "version_id": self.version_id,
            "source": self.source,
            "format": self.list_format,
            "content_sha256": self.content_sha256,
            "entities_sha256": self.entities_sha256,
            "imported_at": self.imported_at,
            "entity_count": self.entity_count,
            "file_name": self.file_name,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ListVersion:
        return cls(
            version_id=str(data["version_id"]),
            source=str(data["source"]),
            list_format=str(data["format"]),
            content_sha256=str(data["content_sha256"]),
            entities_sha256=str(data["entities_sha256"]),
            imported_at=str(data["imported_at"]),
            entity_count=int(data["entity_count"]),
            file_name=str(data["file_name"]),
        )


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _entity_lines(entities: list[ListEntity]) -> bytes:
    return b"".join(
        json.dumps(e.to_json(), ensure_ascii=False, sort_keys=True).encode() + b"\n"
        for e in entities
    )


class ScreeningRepository:
    """The screening context's files under ``<data_dir>/aml/``."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "aml"
        self.lists_dir = self.root / "lists"
        self.versions_dir = self.lists_dir / "versions"
        self.manifest_path = self.lists_dir / "manifest.json"
        self.allow_list_path = self.root / "allow_list.jsonl"
        self.parties_path = self.root / "parties.jsonl"
        self.rescreen_hits_path = self.root / "rescreen_hits.json"

    # --- manifest ----------------------------------------------------------------------------

    def _manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"schema": MANIFEST_SCHEMA, "versions": {}, "current": {}, "history": []}
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ListStoreCorrupt(f"{self.manifest_path} is unreadable: {exc}") from None
        if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
            raise ListStoreCorrupt(f"{self.manifest_path} has an unknown layout")
        return data

    def versions(self) -> list[ListVersion]:
        """Every version ever imported, oldest first."""
        manifest = self._manifest()
        items = [ListVersion.from_json(v) for v in manifest["versions"].values()]
        return sorted(items, key=lambda v: (v.imported_at, v.version_id))

    def current(self) -> dict[str, ListVersion]:
        """The version screened against, per source."""
        manifest = self._manifest()
        return {
            source: ListVersion.from_json(manifest["versions"][version_id])
            for source, version_id in sorted(manifest["current"].items())
        }

    def history(self) -> list[dict[str, str]]:
        return list(self._manifest()["history"])

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise writers (two concurrent imports would race on the manifest)."""
        self.lists_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lists_dir / ".lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def save_version(
        self,
        *,
        source: str,
        list_format: str,
        content_sha256: str,
        imported_at: str,
        entities: list[ListEntity],
    ) -> tuple[ListVersion, bool]:
        """Store and activate a version; ``(version, False)`` when it is already current.

        Call under :meth:`locked`. Identical content for the same source is the same version:
        re-importing the current one changes nothing; re-importing an older one re-activates
        its existing file (recorded in the history) without rewriting it.
        """
        manifest = self._manifest()
        version_id = f"{source}@{content_sha256[:16]}"
        existing = manifest["versions"].get(version_id)
        if existing is not None:
            version = ListVersion.from_json(existing)
            if manifest["current"].get(source) == version_id:
                return version, False
        else:
            lines = _entity_lines(entities)
            version = ListVersion(
                version_id=version_id,
                source=source,
                list_format=list_format,
                content_sha256=content_sha256,
                entities_sha256=hashlib.sha256(lines).hexdigest(),
                imported_at=imported_at,
                entity_count=len(entities),
                file_name=f"{version_id.replace('@', '_')}.jsonl",
            )
            header = json.dumps({"version": version.to_json()}, sort_keys=True).encode() + b"\n"
            path = self.versions_dir / version.file_name
            if not path.exists():
                _atomic_write(path, header + lines)
            manifest["versions"][version_id] = version.to_json()
        manifest["current"][source] = version_id
        manifest["history"].append(
            {"source": source, "version_id": version_id, "activated_at": imported_at}
        )
        _atomic_write(
            self.manifest_path,
            json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n",
        )
        return version, True

    def load_entities(self, version: ListVersion) -> list[ListEntity]:
        path = self.versions_dir / version.file_name
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ListStoreCorrupt(f"version file {version.file_name} unreadable: {exc}") from None
        _, _, lines = raw.partition(b"\n")
        if hashlib.sha256(lines).hexdigest() != version.entities_sha256:
            raise ListStoreCorrupt(f"version file {version.file_name} fails its checksum")
        try:
            entities = [ListEntity.from_json(json.loads(line)) for line in lines.splitlines()]
        except (ValueError, KeyError) as exc:
            raise ListStoreCorrupt(f"version file {version.file_name}: {exc}") from None
        if len(entities) != version.entity_count:
            raise ListStoreCorrupt(f"version file {version.file_name} has the wrong entity count")
        return entities

    # --- allow-list --------------------------------------------------------------------------

    def allow_list(self) -> list[dict[str, str]]:
        entries: list[dict[str, str]] = []
        for line_no, line in enumerate(
            self._lines(self.allow_list_path, ScreeningAllowListInvalid), 1
        ):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                data = None
            if not isinstance(data, dict) or not all(
                isinstance(data.get(k), str) for k in ("name_key", "entity_id")
            ):
                raise ScreeningAllowListInvalid(f"allow_list.jsonl line {line_no} is malformed")
            entries.append({k: str(v) for k, v in data.items()})
        return entries

    def append_allow(self, entry: dict[str, str]) -> None:
        current = self.allow_list_path.read_bytes() if self.allow_list_path.exists() else b""
        line = json.dumps(entry, ensure_ascii=False, sort_keys=True).encode() + b"\n"
        _atomic_write(self.allow_list_path, current + line)

    # --- parties and re-screen hits ----------------------------------------------------------

    def parties(self) -> list[dict[str, Any]]:
        """Parties to re-screen; an absent file means none."""
        parties: list[dict[str, Any]] = []
        for line_no, line in enumerate(self._lines(self.parties_path, ScreeningPartiesInvalid), 1):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                data = None
            if not isinstance(data, dict) or not isinstance(data.get("name"), str):
                raise ScreeningPartiesInvalid(
                    f"parties.jsonl line {line_no}: expected an object with a string 'name'"
                )
            parties.append(data)
        return parties

    def rescreen_hits(self) -> dict[str, list[str]]:
        if not self.rescreen_hits_path.exists():
            return {}
        try:
            data = json.loads(self.rescreen_hits_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}  # a lost record only means every current hit is reported as new
        if not isinstance(data, dict):
            return {}
        return {str(k): [str(x) for x in v] for k, v in data.items() if isinstance(v, list)}

    def save_rescreen_hits(self, hits: dict[str, list[str]]) -> None:
        _atomic_write(
            self.rescreen_hits_path, json.dumps(hits, indent=1, sort_keys=True).encode() + b"\n"
        )

    @staticmethod
    def _lines(path: Path, error: type[ScreeningInputError]) -> Iterator[str]:
        if not path.exists():
            return
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise error(f"{path.name} is not UTF-8") from None
        for line in text.splitlines():
            if line.strip():
                yield line
