"""Local paths and object-store URIs (s3://) behind one pyarrow filesystem interface.

The S3 endpoint is configurable (MinIO, Ceph, a test server) through `StorageOptions.s3_endpoint`,
the `--s3-endpoint` flag or the S2O_S3_ENDPOINT / AWS_ENDPOINT_URL environment variables.
Credentials come from the standard AWS chain (environment, profile, instance role); they are never
passed in task arguments or written to disk by the platform.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

from s2o_platform.errors import S2OError


class UnsupportedURI(S2OError, ValueError):
    """A location that is neither a local path nor s3:// (the message names it and what to use)."""


@dataclass(frozen=True)
class StorageOptions:
    """Where object storage lives. Plain data so it can travel to Ray tasks."""

    s3_endpoint: str | None = None
    s3_region: str | None = None

    @classmethod
    def from_env(cls, s3_endpoint: str | None = None) -> StorageOptions:
        endpoint = s3_endpoint or os.environ.get("S2O_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return cls(s3_endpoint=endpoint, s3_region=region)


def is_uri(path: str) -> bool:
    return "://" in str(path)


def resolve(uri: str, options: StorageOptions | None = None) -> tuple[pafs.FileSystem, str]:
    """Return (filesystem, path inside it) for a local path or an s3:// URI."""
    uri = str(uri)
    options = options or StorageOptions.from_env()
    parsed = urlparse(uri)
    if parsed.scheme in ("s3", "s3a"):
        kwargs: dict = {"region": options.s3_region or "us-east-1", "allow_bucket_creation": True}
        if options.s3_endpoint:
            endpoint = urlparse(options.s3_endpoint)
            kwargs["endpoint_override"] = endpoint.netloc or endpoint.path
            kwargs["scheme"] = endpoint.scheme or "https"
        return pafs.S3FileSystem(**kwargs), f"{parsed.netloc}{parsed.path}".rstrip("/")
    if parsed.scheme in ("", "file"):
        local = parsed.path if parsed.scheme == "file" else uri
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(local))
    raise UnsupportedURI(
        f"unsupported URI scheme {parsed.scheme!r} in {uri!r}: use a local path or s3://bucket/prefix"
    )


def is_safe_relative_key(key: str) -> bool:
    """Whether an object key taken relative to a prefix stays inside a folder when used as a relative path.

    Object stores accept any key ('a/../../etc/x', '/x', 'C:/x'); joined to a local folder or to DEST such a
    key escapes it. Safe: not empty, no leading '/' or '\\', no drive ('C:'), no '..' segment, no NUL;
    '\\' counts as a separator too, as it does on Windows.
    """
    if not key or "\0" in key or key[0] in "/\\" or re.match(r"[A-Za-z]:", key):
        return False
    return ".." not in re.split(r"[/\\]", key)


def join(base: str, *parts: str) -> str:
    """Join path parts with '/', the separator of both local paths here and object keys."""
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a file so that readers see either the old content or the new, never a partial file.

    Local files: write a temporary sibling, fsync it, rename, fsync the folder (so a power cut leaves the old
    file or the whole new one, never a renamed empty one). Object stores: a single PUT is atomic.
    """
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_folder(parent)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(fs: pafs.FileSystem, path: str, recursive: bool = True) -> list[str]:
    """Sorted paths of the files under a folder (empty list when it does not exist)."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type == pafs.FileType.File:
        return [path]
    selector = pafs.FileSelector(path, recursive=recursive)
    return sorted(i.path for i in fs.get_file_info(selector) if i.type == pafs.FileType.File)


def gdal_path(uri: str, options: StorageOptions | None = None) -> tuple[str, dict[str, str]]:
    """(path, GDAL config) for rasterio to read `uri` window by window: a local path, or GDAL's
    /vsis3/ with the endpoint of `options` (range requests: nothing is downloaded whole)."""
    parsed = urlparse(str(uri))
    if parsed.scheme not in ("s3", "s3a"):
        return resolve(uri, options)[1], {}
    options = options or StorageOptions.from_env()
    env = {"AWS_REGION": options.s3_region or "us-east-1", "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
    if options.s3_endpoint:
        endpoint = urlparse(options.s3_endpoint)
        env.update(
            AWS_S3_ENDPOINT=endpoint.netloc or endpoint.path,
            AWS_HTTPS="NO" if endpoint.scheme == "http" else "YES",
            AWS_VIRTUAL_HOSTING="FALSE",
        )
    return f"/vsis3/{parsed.netloc}{parsed.path}", env


def put_file_atomic(local_path: str, fs: pafs.FileSystem, path: str) -> None:
    """Copy a local file to `path` so that readers never see a partial file (streamed, not loaded whole)."""
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        target = f"{parent}/.tmp-{uuid.uuid4().hex}"
        with open(local_path, "rb") as src, open(target, "wb") as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(target, path)
        fsync_folder(parent)
        return
    with open(local_path, "rb") as src, fs.open_output_stream(path) as dst:
        while chunk := src.read(8 << 20):
            dst.write(chunk)


def fsync_folder(path: str) -> None:
    """Make a rename inside a local folder durable (POSIX: the folder's entry is data too)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders
    finally:
        os.close(fd)
