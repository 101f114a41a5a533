"""Where bulk export files live: a local directory (the default) or S3.

Files hold PHI. Locally they are written 0600 inside 0700 directories, outside
static and media; in S3 every object is written with server-side encryption
(settings refuse an S3 bucket without it when DEBUG=false). A file becomes visible
only when it is complete: locally by renaming `*.part`, in S3 because the object is
uploaded from a local staging file once written.

Keys are `<org id>/<job id>/<file name>`, so one prefix holds an organization's files.
"""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from django.conf import settings

CHUNK = 64 * 1024
_BUFFER = 1024 * 1024


class PartWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    def commit(self) -> None: ...

    def discard(self) -> None: ...


class ExportStorage(Protocol):
    def create(self, key: str) -> PartWriter: ...

    def open(self, key: str) -> tuple[Iterator[bytes], int] | None:
        """The file's bytes in chunks and its size, or None if it does not exist."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every file under prefix; returns how many. Idempotent."""
        ...


def _inside(root: Path, key: str) -> Path:
    path = (root / key).resolve()
    if path != root.resolve() and root.resolve() not in path.parents:
        raise ValueError("storage key escapes the export directory")
    return path


class _LocalPart:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        self.partial = path.with_name(path.name + ".part")
        fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.handle: BinaryIO = os.fdopen(fd, "wb", buffering=_BUFFER)

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        self.handle.close()
        self.partial.unlink(missing_ok=True)


def _read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def _delete_tree(root: Path, prefix: str) -> int:
    target = _inside(root, prefix)
    if not target.exists():
        return 0
    if target.is_file():
        target.unlink()
        return 1
    count = sum(1 for p in target.rglob("*") if p.is_file())
    shutil.rmtree(target)
    return count


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def create(self, key: str) -> PartWriter:
        return _LocalPart(_inside(self.root, key))

    def open(self, key: str) -> tuple[Iterator[bytes], int] | None:
        path = _inside(self.root, key)
        if not path.is_file():
            return None
        return _read_chunks(path), path.stat().st_size

    def delete_prefix(self, prefix: str) -> int:
        return _delete_tree(self.root, prefix)


class _S3Part:
    """Written to a local staging file first, so memory stays flat, then uploaded
    with server-side encryption in one managed (multipart when large) upload."""

    def __init__(self, storage: "S3Storage", key: str) -> None:
        self.storage, self.key = storage, key
        self.local = _LocalPart(_inside(storage.staging, key))

    def write(self, data: bytes) -> None:
        self.local.write(data)

    def commit(self) -> None:
        self.local.commit()
        try:
            self.storage.client.upload_file(
                str(self.local.path),
                self.storage.bucket,
                self.storage.prefix + self.key,
                ExtraArgs=self.storage.encryption,
            )
        finally:
            self.local.path.unlink(missing_ok=True)

    def discard(self) -> None:
        self.local.discard()


class S3Storage:
    def __init__(
        self,
        *,
        bucket: str,
        prefix: str,
        sse: str,
        kms_key_id: str = "",
        region: str = "",
        endpoint_url: str = "",
        staging: Path,
    ) -> None:
        import boto3

        self.bucket, self.prefix, self.staging = bucket, prefix, Path(staging)
        self.client: Any = boto3.client(
            "s3", region_name=region or None, endpoint_url=endpoint_url or None
        )
        self.encryption: dict[str, str] = {}
        if sse:
            self.encryption["ServerSideEncryption"] = sse
        if sse == "aws:kms" and kms_key_id:
            self.encryption["SSEKMSKeyId"] = kms_key_id

    def create(self, key: str) -> PartWriter:
        return _S3Part(self, key)

    def open(self, key: str) -> tuple[Iterator[bytes], int] | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except self.client.exceptions.NoSuchKey:
            return None
        body = obj["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(CHUNK)
            finally:
                body.close()

        return chunks(), int(obj["ContentLength"])

    def delete_prefix(self, prefix: str) -> int:
        """Every version of every object under the prefix, delete markers included:
        on a versioned bucket a plain delete would keep the PHI as an older version."""
        deleted = _delete_tree(self.staging, prefix)
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            versions = page.get("Versions", [])
            deleted += sum(1 for v in versions if v.get("IsLatest"))
            objects = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in [*versions, *page.get("DeleteMarkers", [])]
            ]
            for start in range(0, len(objects), 1000):
                self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": objects[start : start + 1000], "Quiet": True},
                )
        return deleted


def get_storage() -> ExportStorage:
    if settings.EXPORT_S3_BUCKET:
        return S3Storage(
            bucket=settings.EXPORT_S3_BUCKET,
            prefix=settings.EXPORT_S3_PREFIX,
            sse=settings.EXPORT_S3_SSE,
            kms_key_id=settings.EXPORT_S3_KMS_KEY_ID,
            region=settings.EXPORT_S3_REGION,
            endpoint_url=settings.EXPORT_S3_ENDPOINT_URL,
            staging=Path(settings.EXPORT_DIR) / "staging",
        )
    return LocalStorage(Path(settings.EXPORT_DIR) / "files")


def delete_org_files(org_id: object) -> int:
    """Every export file of an organization, wherever it may be: the configured
    storage, and the local directory too (files written before S3 was configured)."""
    deleted = get_storage().delete_prefix(str(org_id))
    if settings.EXPORT_S3_BUCKET:
        deleted += LocalStorage(Path(settings.EXPORT_DIR) / "files").delete_prefix(str(org_id))
    return deleted
