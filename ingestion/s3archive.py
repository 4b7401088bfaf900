"""Archive sealed raw-store days to an S3-compatible bucket under Object Lock.

The local chain and manifest prove that nothing changed only as long as
someone cannot rewrite both. A copy in a bucket with versioning and Object
Lock in COMPLIANCE mode is the anchor: an overwrite only adds a new version,
the original stays retrievable, and no one (not even the account root) can
delete a locked version before its retention date.

Keys are ``<prefix>YYYY/MM/DD/<stream>.seg`` and ``<prefix>YYYY/MM/DD/MANIFEST.json``.
Verification always judges the *oldest* version of each key, the one written
at archive time, and reports any later version or delete marker.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ingestion.rawstore import MANIFEST_NAME, Manifest, RawStore, RawStoreError

_CHUNK = 1 << 20


class ArchiveError(RawStoreError):
    """The bucket or the day cannot be archived as asked."""


@dataclass(frozen=True, slots=True)
class ArchivedObject:
    key: str
    version_id: str
    sha256: str
    retain_until: datetime | None


@dataclass(frozen=True, slots=True)
class ArchiveProblem:
    key: str
    version_id: str | None
    detail: str

    def __str__(self) -> str:
        return f"archive: key={self.key} version={self.version_id or '-'}: {self.detail}"


@dataclass(slots=True)
class ArchiveReport:
    day: date
    problems: list[ArchiveProblem] = field(default_factory=list)
    checked: list[ArchivedObject] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class S3Archive:
    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        client: Any = None,
        retention_days: int = 2555,
        prefix: str = "raw/",
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint_url)
        self.client = client
        self.bucket = bucket
        self.retention_days = retention_days
        self.prefix = prefix

    def key(self, rel: str) -> str:
        return f"{self.prefix}{rel}"

    def ensure_bucket(self) -> None:
        """Create the bucket with Object Lock (hence versioning), or check an existing one has it.

        S3 enables Object Lock only at bucket creation (or through a support
        process), so an existing bucket without it is an error, not something
        to patch up here.
        """
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            exists = True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
            exists = False
        if not exists:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "ObjectLockEnabledForBucket": True}
            region = self.client.meta.region_name
            if region and region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            self.client.create_bucket(**kwargs)
        self.client.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        try:
            lock = self.client.get_object_lock_configuration(Bucket=self.bucket)["ObjectLockConfiguration"]
        except ClientError as exc:
            raise ArchiveError(f"bucket {self.bucket} has no Object Lock; create a new bucket with it") from exc
        if lock.get("ObjectLockEnabled") != "Enabled":
            raise ArchiveError(f"bucket {self.bucket} has no Object Lock; create a new bucket with it")

    def upload_sealed_day(self, store: RawStore, day: date) -> list[ArchivedObject]:
        """Upload each sealed segment, then the manifest, each locked in COMPLIANCE mode.

        A segment whose bytes no longer match its sealed hash is refused, so a
        tampered local file never becomes the archived original. A key that is
        already archived with the same hash is not uploaded again (a second
        upload would only add a version).
        """
        if not store.is_sealed(day):
            raise ArchiveError(f"day {day} is not sealed; seal it before archiving")
        manifest_path = store.manifest_path(day)
        manifest = Manifest.from_json(manifest_path.read_bytes())
        retain_until = datetime.now(UTC) + timedelta(days=self.retention_days)
        out: list[ArchivedObject] = []
        for _stream, sm in sorted(manifest.streams.items()):
            body = (store.root / sm.segment).read_bytes()
            digest = hashlib.sha256(body).hexdigest()
            if digest != sm.file_sha256:
                raise ArchiveError(f"segment {sm.segment} does not match its sealed hash; not archived")
            out.append(self._put(self.key(sm.segment), body, digest, retain_until))
        rel_manifest = f"{day:%Y/%m/%d}/{MANIFEST_NAME}"
        body = manifest_path.read_bytes()
        out.append(self._put(self.key(rel_manifest), body, hashlib.sha256(body).hexdigest(), retain_until))
        return out

    def _put(self, key: str, body: bytes, sha_hex: str, retain_until: datetime) -> ArchivedObject:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
            if head.get("Metadata", {}).get("sha256") == sha_hex:
                return ArchivedObject(key, head["VersionId"], sha_hex, head.get("ObjectLockRetainUntilDate"))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        # S3 insists on an integrity header for Object Lock uploads; our own
        # SHA-256 doubles as the check that the bytes arrived intact.
        resp = self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=base64.b64encode(bytes.fromhex(sha_hex)).decode(),
            Metadata={"sha256": sha_hex},
            ObjectLockMode="COMPLIANCE",
            ObjectLockRetainUntilDate=retain_until,
        )
        return ArchivedObject(key, resp["VersionId"], sha_hex, retain_until)

    def verify_day(self, day: date, *, store: RawStore | None = None, manifest: Manifest | None = None) -> ArchiveReport:
        """Compare the archived originals of a day with its manifest.

        ``store`` (or an explicit ``manifest``) adds the local sealed manifest
        to the comparison, so a local edit and an archive edit both show.

        Steps:
        1. Take the oldest version of the archived MANIFEST.json as the sealed
           truth; if a local ``manifest`` is given it must agree with it.
        2. For each stream, hash the oldest version of its segment and compare
           with the manifest's file hash.
        3. Report any key with more than one version or a delete marker
           (someone overwrote or hid it), and any original not locked in
           COMPLIANCE mode.
        """
        if manifest is None and store is not None and store.is_sealed(day):
            manifest = store.load_manifest(day)
        report = ArchiveReport(day=day)
        rel_manifest = f"{day:%Y/%m/%d}/{MANIFEST_NAME}"
        manifest_key = self.key(rel_manifest)
        original = self._original(manifest_key, report)
        if original is None:
            return report
        body = self._read(manifest_key, original)
        archived = Manifest.from_json(body)
        report.checked.append(self._checked(manifest_key, original, hashlib.sha256(body).hexdigest(), report))
        if manifest is not None and manifest.streams != archived.streams:
            differing = sorted(
                name
                for name in set(manifest.streams) | set(archived.streams)
                if manifest.streams.get(name) != archived.streams.get(name)
            )
            report.problems.append(
                ArchiveProblem(manifest_key, original, f"local manifest differs for stream(s) {', '.join(differing)}")
            )
        for _stream, sm in sorted(archived.streams.items()):
            key = self.key(sm.segment)
            version = self._original(key, report)
            if version is None:
                continue
            sha = hashlib.sha256()
            size = 0
            stream_body = self.client.get_object(Bucket=self.bucket, Key=key, VersionId=version)["Body"]
            for chunk in stream_body.iter_chunks(_CHUNK):
                sha.update(chunk)
                size += len(chunk)
            digest = sha.hexdigest()
            report.checked.append(self._checked(key, version, digest, report))
            if digest != sm.file_sha256 or size != sm.bytes:
                report.problems.append(
                    ArchiveProblem(key, version, f"archived bytes ({size}, sha256 {digest}) differ from the manifest")
                )
        return report

    def _original(self, key: str, report: ArchiveReport) -> str | None:
        """Version id of the first version of ``key``, noting later versions and delete markers."""
        versions: list[dict[str, Any]] = []
        markers: list[dict[str, Any]] = []
        for page in self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key):
            versions += [v for v in page.get("Versions", []) if v["Key"] == key]
            markers += [m for m in page.get("DeleteMarkers", []) if m["Key"] == key]
        if not versions:
            report.problems.append(ArchiveProblem(key, None, "not archived"))
            return None
        # S3 lists the versions of a key newest first; LastModified can tie
        # within a second, so the listing order is what tells the original.
        versions.reverse()
        first = versions[0]["VersionId"]
        if len(versions) > 1:
            later = ", ".join(v["VersionId"] for v in versions[1:])
            report.problems.append(ArchiveProblem(key, first, f"overwritten after archiving by version(s) {later}"))
        if markers:
            report.problems.append(ArchiveProblem(key, first, f"hidden behind {len(markers)} delete marker(s)"))
        return str(first)

    def _read(self, key: str, version: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key, VersionId=version)["Body"].read())

    def _checked(self, key: str, version: str, sha_hex: str, report: ArchiveReport) -> ArchivedObject:
        head = self.client.head_object(Bucket=self.bucket, Key=key, VersionId=version)
        until = head.get("ObjectLockRetainUntilDate")
        if head.get("ObjectLockMode") != "COMPLIANCE" or until is None or until <= datetime.now(UTC):
            report.problems.append(ArchiveProblem(key, version, f"not under COMPLIANCE lock (mode {head.get('ObjectLockMode')})"))
        return ArchivedObject(key, version, sha_hex, until)
