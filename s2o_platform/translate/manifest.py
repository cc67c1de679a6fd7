"""DEST/_s2o_manifest.jsonl: one line per scene (the latest outcome wins), rewritten atomically."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from s2o_platform import storage

MANIFEST_FILE = "_s2o_manifest.jsonl"


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


class Manifest:
    def __init__(self, dest: str, options: storage.StorageOptions | None = None):
        self.options = options
        self.fs, self.root = storage.resolve(dest, options)
        self.path = storage.join(self.root, MANIFEST_FILE)
        self.records: dict[str, SceneRecord] = {}
        if storage.exists(self.fs, self.path):
            for line in storage.read_bytes(self.fs, self.path).decode().splitlines():
                if line.strip():
                    d = json.loads(line)
                    self.records[d["scene"]] = SceneRecord(**d)

    def is_done(self, scene_uri: str) -> bool:
        """Done = recorded as done and its output still there (a deleted output is translated again)."""
        record = self.records.get(scene_uri)
        if not (record and record.status == "done" and record.output):
            return False
        fs, path = storage.resolve(record.output, self.options)
        return storage.exists(fs, path)

    def record(self, record: SceneRecord) -> None:
        self.records[record.scene] = record
        data = "".join(json.dumps(asdict(r)) + "\n" for r in self.records.values()).encode()
        storage.write_bytes_atomic(self.fs, self.path, data)
