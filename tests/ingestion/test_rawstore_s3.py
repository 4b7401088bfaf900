"""The Object Lock archive keeps the sealed original, against moto's S3 server on loopback.

Moto 5.2.5 enforces, and these tests check: Object Lock enabled at creation
(with versioning), an overwrite creating a new version, and refusing to
delete a COMPLIANCE-locked version (AccessDenied), even with
BypassGovernanceRetention. It does not enforce shortening a COMPLIANCE
retention date or downgrading it to GOVERNANCE (both are accepted), and its
GetObjectRetention answers 500, so retention is read from HeadObject here.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from ingestion.rawstore import RawStore
from ingestion.s3archive import ArchiveError, S3Archive

DAY = date(2024, 3, 5)
DAY_NS = int(datetime(2024, 3, 5, tzinfo=UTC).timestamp()) * 1_000_000_000


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def archive(s3_url: str, request: pytest.FixtureRequest) -> S3Archive:
    client = boto3.client(
        "s3",
        endpoint_url=s3_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    # One bucket per test keeps the versions of one test out of the next.
    name = "raw-" + hashlib.sha256(request.node.name.encode()).hexdigest()[:20]
    arch = S3Archive(name, client=client, retention_days=30)
    arch.ensure_bucket()
    return arch


@pytest.fixture
def sealed(tmp_path: Path) -> RawStore:
    store = RawStore(tmp_path)
    with store.writer("sim") as w:
        w.append_many([b'{"b":"1.0","a":"1.1","i":%d}' % i for i in range(50)], recv_ns=DAY_NS)
    with store.writer("binance") as w:
        w.append_many([b'{"u":%d}' % i for i in range(20)], recv_ns=DAY_NS + 7)
    store.seal_day(DAY)
    return store


def test_it_creates_the_bucket_with_versioning_and_object_lock(archive: S3Archive) -> None:
    client = archive.client
    assert client.get_bucket_versioning(Bucket=archive.bucket)["Status"] == "Enabled"
    lock = client.get_object_lock_configuration(Bucket=archive.bucket)["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled"
    archive.ensure_bucket()  # Idempotent on an existing locked bucket.


def test_it_refuses_a_bucket_created_without_object_lock(archive: S3Archive) -> None:
    archive.client.create_bucket(Bucket=archive.bucket + "-plain")
    plain = S3Archive(archive.bucket + "-plain", client=archive.client)
    with pytest.raises(ArchiveError, match="no Object Lock"):
        plain.ensure_bucket()


def test_it_uploads_each_sealed_segment_and_the_manifest_under_compliance_lock(archive: S3Archive, sealed: RawStore) -> None:
    uploaded = archive.upload_sealed_day(sealed, DAY)

    keys = [o.key for o in uploaded]
    assert keys == ["raw/2024/03/05/binance.seg", "raw/2024/03/05/sim.seg", "raw/2024/03/05/MANIFEST.json"]
    seg = sealed.root / "2024/03/05/sim.seg"
    body = archive.client.get_object(Bucket=archive.bucket, Key="raw/2024/03/05/sim.seg")["Body"].read()
    assert body == seg.read_bytes()
    head = archive.client.head_object(Bucket=archive.bucket, Key="raw/2024/03/05/sim.seg")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=29)
    report = archive.verify_day(DAY, store=sealed)
    assert report.ok, report.problems
    assert len(report.checked) == 3


def test_it_does_not_upload_an_unchanged_object_twice(archive: S3Archive, sealed: RawStore) -> None:
    first = archive.upload_sealed_day(sealed, DAY)
    second = archive.upload_sealed_day(sealed, DAY)

    assert [o.version_id for o in first] == [o.version_id for o in second]
    versions = archive.client.list_object_versions(Bucket=archive.bucket, Prefix="raw/2024/03/05/sim.seg")
    assert len(versions["Versions"]) == 1


def test_it_refuses_to_archive_an_unsealed_day(archive: S3Archive, tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    with store.writer("sim") as w:
        w.append(b"x", recv_ns=DAY_NS)
    with pytest.raises(ArchiveError, match="not sealed"):
        archive.upload_sealed_day(store, DAY)


def test_it_keeps_the_original_version_when_an_object_is_overwritten(archive: S3Archive, sealed: RawStore) -> None:
    uploaded = {o.key: o for o in archive.upload_sealed_day(sealed, DAY)}
    key = "raw/2024/03/05/sim.seg"
    original = uploaded[key].version_id

    archive.client.put_object(Bucket=archive.bucket, Key=key, Body=b"forged segment")

    latest = archive.client.get_object(Bucket=archive.bucket, Key=key)
    assert latest["Body"].read() == b"forged segment"
    assert latest["VersionId"] != original
    kept = archive.client.get_object(Bucket=archive.bucket, Key=key, VersionId=original)["Body"].read()
    assert kept == (sealed.root / "2024/03/05/sim.seg").read_bytes()
    report = archive.verify_day(DAY)
    assert [(p.key, p.version_id) for p in report.problems] == [(key, original)]
    assert "overwritten" in report.problems[0].detail


def test_it_cannot_delete_a_locked_version(archive: S3Archive, sealed: RawStore) -> None:
    uploaded = {o.key: o for o in archive.upload_sealed_day(sealed, DAY)}
    key = "raw/2024/03/05/MANIFEST.json"
    version = uploaded[key].version_id

    for extra in ({}, {"BypassGovernanceRetention": True}):
        with pytest.raises(ClientError) as info:
            archive.client.delete_object(Bucket=archive.bucket, Key=key, VersionId=version, **extra)
        assert info.value.response["Error"]["Code"] == "AccessDenied"

    body = archive.client.get_object(Bucket=archive.bucket, Key=key, VersionId=version)["Body"].read()
    assert body == sealed.manifest_path(DAY).read_bytes()


def test_it_reports_a_delete_marker_and_still_verifies_the_original(archive: S3Archive, sealed: RawStore) -> None:
    archive.upload_sealed_day(sealed, DAY)
    key = "raw/2024/03/05/binance.seg"
    archive.client.delete_object(Bucket=archive.bucket, Key=key)  # Allowed: it only adds a delete marker.

    report = archive.verify_day(DAY)

    assert [p.key for p in report.problems] == [key]
    assert "delete marker" in report.problems[0].detail
    assert key in [o.key for o in report.checked]


def test_it_reports_a_local_manifest_that_differs_from_the_archived_one(archive: S3Archive, sealed: RawStore) -> None:
    archive.upload_sealed_day(sealed, DAY)
    local = sealed.load_manifest(DAY)
    forged = dict(local.streams)
    forged["sim"] = type(forged["sim"])(**{**forged["sim"].to_json(), "file_sha256": "00" * 32})

    report = archive.verify_day(DAY, manifest=type(local)(day=DAY, sealed_at=local.sealed_at, streams=forged))

    assert len(report.problems) == 1
    assert "sim" in report.problems[0].detail
