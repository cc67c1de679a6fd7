"""DEST's bookkeeping for `s2o translate`: the manifest of scene outcomes, the lock that keeps one run per
DEST, and the work folder, whose leftovers a killed run cannot remove itself.

DEST/_s2o_manifest.jsonl holds one JSON line per outcome; the latest line of a scene wins.
  Local DEST: each record is appended, flushed and fsync'ed (constant work per scene, where rewriting the file
  made a run quadratic in the archive; a crash loses at most the line being written). A line that does not
  parse (torn by a crash) is skipped with a warning, so the scene it would record is translated again.
  s3:// DEST: object stores cannot append, and rewriting the object per scene is quadratic again. Each record
  is one small object DEST/_s2o_manifest/<time>-<id>.json (a single PUT: whole or absent); the end of a run
  folds them into _s2o_manifest.jsonl (compact()). A run killed before that leaves its records as objects,
  which the next run reads after the .jsonl.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone

import pyarrow.fs as pafs

from s2o_platform import storage
from s2o_platform.errors import S2OError

MANIFEST_FILE = "_s2o_manifest.jsonl"
MANIFEST_RECORDS_FOLDER = "_s2o_manifest"  # s3:// DEST: one object per record until the run compacts them
LOCK_FILE = "_s2o_translate.lock"
WORK_FOLDER = "_s2o_work"  # local DEST: half-written scenes, removed at the end of a run (or by the next one)
PARTIAL_FILE = re.compile(r"\.tmp-[0-9a-f]{32}")  # storage.write_bytes_atomic / put_file_atomic, cut off


#: where a scene's acquisition time came from (SceneRecord.datetime_source; said in its STAC item)
DATETIME_FROM_ITEM = "the source item"
DATETIME_FROM_FILE = "the source file's TIFFTAG_DATETIME"
DATETIME_NONE = "none"


@dataclass
class SceneRecord:
    scene: str  # the source URI
    status: str  # done | failed
    output: str | None = None  # the output's URI (or local path)
    reason: str | None = None
    tiles: int = 0
    seconds: float = 0.0
    scale: str | None = None  # the SAR scale used, and why
    finished_at: float = field(default_factory=time.time)
    source_item: str | None = None  # the STAC item the scene came from (a STAC SOURCE)
    datetime: str | None = (
        None  # the acquisition time (ISO 8601 or the TIFF tag's form), where the source gave one
    )
    # where `datetime` came from: DATETIME_FROM_ITEM / _FILE, or DATETIME_NONE; None in a manifest written before
    # this was recorded (the catalog then reads the source file's tag once more)
    datetime_source: str | None = None
    model: dict | None = None  # what made the output: stage, steps, bundle_sha256, seed, uncertainty_samples
    # the output's grid, as written (crs_wkt, transform, shape [height, width], bands): the catalog's footprint and
    # projection without opening the output again; None in a record of an older version (the output is read)
    grid: dict | None = None


RECORD_FIELDS = frozenset(f.name for f in fields(SceneRecord))


@dataclass(frozen=True)
class DestListing:
    """Files of some of DEST's folders, listed at once (Manifest.listing)."""

    folders: frozenset[str]
    files: frozenset[str]

    def has(self, fs, path: str) -> bool:
        """Whether a file is there: looked up where its folder was listed, else asked for."""
        if posixpath.dirname(path) in self.folders:
            return path in self.files
        return storage.exists(fs, path)


class Manifest:
    def __init__(
        self, dest: str, options: storage.StorageOptions | None = None, log: Callable[[str], None] = print
    ):
        self.options, self.log = options, log
        self.fs, self.root = storage.resolve(dest, options)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.path = storage.join(self.root, MANIFEST_FILE)
        self.records_folder = storage.join(self.root, MANIFEST_RECORDS_FOLDER)
        shown_root = self.root if self.local else dest.rstrip("/")  # as the user names DEST
        self.shown = storage.join(shown_root, MANIFEST_FILE)
        self.records: dict[str, SceneRecord] = {}
        # Set by the run before it records anything: what every done record of this run says of its model, and
        # what each scene's source said of it (a STAC item's href and datetime), by scene URI.
        self.run_model: dict | None = None
        self.scene_sources: dict[str, dict] = {}
        self._lines = 0  # lines in the .jsonl, superseded and unreadable ones included
        self._ends_with_newline = True
        self._record_objects: list[str] = []
        if storage.exists(self.fs, self.path):
            data = storage.read_bytes(self.fs, self.path)
            self._ends_with_newline = not data or data.endswith(b"\n")
            for number, line in enumerate(data.split(b"\n"), start=1):
                if line.strip():
                    self._lines += 1
                    self._load(line, f"{self.shown} line {number}")
        if not self.local:
            self._record_objects = storage.list_files(self.fs, self.records_folder)
            for path in self._record_objects:
                where = storage.join(shown_root, MANIFEST_RECORDS_FOLDER, path.rsplit("/", 1)[-1])
                self._load(storage.read_bytes(self.fs, path), where)

    def _load(self, raw: bytes, where: str) -> None:
        try:
            data = json.loads(raw.decode())
            # keys of a newer version's record are left out (its scene is not translated again for them)
            record = SceneRecord(**{k: v for k, v in data.items() if k in RECORD_FIELDS})
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError, AttributeError):
            self.log(
                f"[translate] warning: {where} is not a complete record (a run stopped while writing it?): "
                f"skipped, so the scene it would record is translated again"
            )
            return
        self.records[record.scene] = record

    def listing(self) -> DestListing | None:
        """The files beside the recorded outputs in DEST (outputs and their quicklooks), from one listing per
        folder that holds any (on S3 a LIST request per 1000 objects), for is_done and the publishing step to
        consult instead of a request per file: on a large archive on S3 that is thousands of requests fewer per
        run. Only those folders, not all of DEST (its catalog items, manifest records, anything else kept there).
        Taken when needed: it does not see files written after it. None where a folder cannot be listed (a
        warning; the files are then asked for one by one, as before)."""
        folders = set()
        for record in self.records.values():
            if record.status == "done" and record.output:
                path = storage.resolve(record.output, self.options)[1]
                if path.startswith(self.root.rstrip("/") + "/"):
                    folders.add(posixpath.dirname(path))
        files: set[str] = set()
        for folder in sorted(folders):
            try:
                files.update(storage.list_files(self.fs, folder, recursive=False))
            except OSError as err:
                self.log(
                    f"[translate] warning: {folder} could not be listed ({type(err).__name__}: {err}): "
                    "outputs are looked for one by one"
                )
                return None
        return DestListing(frozenset(folders), frozenset(files))

    def is_done(self, scene_uri: str, listing: DestListing | None = None) -> bool:
        """Done = recorded as done and its output still there (a deleted output is translated again), looked up
        in `listing` (Manifest.listing) where one is given."""
        record = self.records.get(scene_uri)
        if not (record and record.status == "done" and record.output):
            return False
        fs, path = storage.resolve(record.output, self.options)
        return listing.has(fs, path) if listing is not None else storage.exists(fs, path)

    def record(self, record: SceneRecord) -> None:
        """Record a scene this run translated or failed (a done one gets the run's model and its STAC item's
        values)."""
        if record.status == "done":
            record.model = record.model or self.run_model
            for key, value in self.scene_sources.get(record.scene, {}).items():
                if value is not None:  # a STAC item's time wins over the file's tag
                    setattr(record, key, value)
        self.amend(record)

    def amend(self, record: SceneRecord) -> None:
        """Store a record as it is (also one of an earlier run, completed with what it lacked)."""
        self.records[record.scene] = record
        line = (json.dumps(asdict(record)) + "\n").encode()
        if self.local:
            self._append(line)
        else:
            path = storage.join(self.records_folder, f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json")
            with self.fs.open_output_stream(path) as f:  # one PUT: the record is whole or absent
                f.write(line)
            self._record_objects.append(path)

    def _append(self, line: bytes) -> None:
        os.makedirs(self.root, exist_ok=True)
        if not self._ends_with_newline:
            line = b"\n" + line  # the last line was torn by a crash: this record starts a line of its own
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._ends_with_newline = True
        self._lines += 1

    def compact(self) -> None:
        """Rewrite _s2o_manifest.jsonl atomically with one line per scene, when there is anything to fold
        (superseded or unreadable lines; s3:// record objects, deleted once folded). Once per run: linear."""
        if self._lines == len(self.records) and not self._record_objects:
            return
        data = "".join(json.dumps(asdict(r)) + "\n" for r in self.records.values()).encode()
        storage.write_bytes_atomic(self.fs, self.path, data)
        self._lines, self._ends_with_newline = len(self.records), True
        for path in self._record_objects:  # after the .jsonl holds them: a crash in between only repeats them
            self.fs.delete_file(path)
        self._record_objects = []


class DestLockedError(S2OError, RuntimeError):
    """Another run holds DEST's lock."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class DestLock:
    """One run at a time per DEST: DEST/_s2o_translate.lock names its holder (host, pid, start time), so two
    runs never translate the same scenes into one place, each believing the manifest is its own.

    Local DEST: created with O_EXCL, so of two runs starting together exactly one gets it. A lock whose pid
    is not alive on this same host was left by a killed run: it is taken over with a warning. The pid of a
    lock from another host cannot be checked: the message says to delete the lock if that run is gone.
    (Two runs taking over the same stale lock in the same instant can both proceed: rare, and said here.)
    s3:// DEST: best effort. pyarrow has no create-if-absent for objects, so the lock object is checked,
    written and read back; two runs starting within that round trip can both pass. It still stops the
    common case: a second run started while one is going.
    """

    def __init__(
        self, dest: str, options: storage.StorageOptions | None = None, log: Callable[[str], None] = print
    ):
        self.dest, self.log = dest, log
        self.fs, self.root = storage.resolve(dest, options)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.path = storage.join(self.root, LOCK_FILE)
        self.shown = self.path if self.local else storage.join(dest, LOCK_FILE)
        self.held: bytes | None = None

    def acquire(self) -> None:
        now = time.time()
        me = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started_at": now,
                "started": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
            }
        ).encode()
        for _ in range(3):  # a stale lock is removed, then created again (another run may get there first)
            if self._create(me):
                self.held = me
                return
            holder = self._read()
            if holder is None:  # released in between
                continue
            if not self._stale(holder):
                raise DestLockedError(self._held_message(holder))
            self.log(
                f"[translate] warning: taking over the stale lock {self.shown}: its run ({self._describe(holder)}) "
                f"is no longer running on this host"
            )
            self._remove()
        raise DestLockedError(self._held_message(self._read() or {}))

    def release(self) -> None:
        """Remove the lock if it is still this run's (never one another run has taken over)."""
        if self.held is None:
            return
        try:
            if storage.read_bytes(self.fs, self.path) == self.held:
                self._remove()
            else:
                self.log(f"[translate] warning: {self.shown} now names another run; left in place")
        except (FileNotFoundError, OSError):
            pass  # DEST or the lock removed meanwhile: nothing to release
        self.held = None

    def _create(self, me: bytes) -> bool:
        if self.local:
            os.makedirs(self.root, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(me)
                f.flush()
                os.fsync(f.fileno())
            return True
        if storage.exists(self.fs, self.path):
            return False
        with self.fs.open_output_stream(self.path) as f:
            f.write(me)
        return storage.read_bytes(self.fs, self.path) == me  # another run's write after ours wins

    def _read(self) -> dict | None:
        """The holder; None when there is no lock; {} when it cannot be read (being written, or a crash then)."""
        try:
            raw = storage.read_bytes(self.fs, self.path)
        except (FileNotFoundError, OSError):
            return None if not storage.exists(self.fs, self.path) else {}
        try:
            holder = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return holder if isinstance(holder, dict) else {}

    @staticmethod
    def _stale(holder: dict) -> bool:
        try:
            pid = int(holder["pid"])
        except (KeyError, TypeError, ValueError):
            return False
        return holder.get("host") == socket.gethostname() and not _pid_alive(pid)

    @staticmethod
    def _describe(holder: dict) -> str:
        started = holder.get("started_at")
        if not isinstance(started, (int, float)):
            return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        when = datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds")
        return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {when}"

    def _held_message(self, holder: dict) -> str:
        who = (
            f"another `s2o translate` run ({self._describe(holder)})"
            if holder
            else "another `s2o translate` run (its lock cannot be read yet: starting this instant, or killed while starting)"
        )
        return (
            f"{self.dest} is being written by {who}; lock {self.shown}. Wait for it to finish, or stop it; "
            f"if that run is gone (killed, or its machine lost), delete {self.shown} and run again"
        )

    def _remove(self) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            pass


def work_folder(dest: str, options: storage.StorageOptions | None = None) -> str:
    """Where a run writes half-done scenes: DEST/_s2o_work for a local DEST (DEST's disk, which holds the
    outputs anyway, and found by the next run into DEST), else a folder of the system temp dir named after
    DEST (and its endpoint), so that only a run holding DEST's lock ever uses or removes it."""
    fs, root = storage.resolve(dest, options)
    if isinstance(fs, pafs.LocalFileSystem):
        return storage.join(root, WORK_FOLDER)
    endpoint = options.s3_endpoint if options else None
    digest = hashlib.sha256(f"{endpoint}|{dest.split('://', 1)[0]}://{root}".encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"s2o-translate-work-{digest}")


def remove_leftovers(dest: str, options: storage.StorageOptions | None, folders: set[str]) -> list[str]:
    """Remove what an earlier run into DEST, killed (SIGKILL, power loss), left behind: its work folder and the
    partial copies (.tmp-<hex>) beside the outputs, in DEST and the `folders` under it where outputs go.
    Only called while holding DEST's lock, so no running run owns them. Returns what was removed."""
    removed = []
    work = work_folder(dest, options)
    if os.path.exists(work):
        shutil.rmtree(work)
        removed.append(work)
    fs, root = storage.resolve(dest, options)
    if isinstance(fs, pafs.LocalFileSystem):  # object stores: a cut-off upload never becomes an object
        for folder in sorted({"", *folders}):
            path = storage.join(root, folder) if folder else root
            try:
                names = os.listdir(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in sorted(n for n in names if PARTIAL_FILE.fullmatch(n)):
                os.remove(os.path.join(path, name))
                removed.append(os.path.join(path, name))
    return removed
