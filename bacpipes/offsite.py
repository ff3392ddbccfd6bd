"""Off-site copies of backups in an S3-compatible object store (AWS S3, MinIO, Ceph, ...), for a site and
for central alike (so in the core): each `pg_dump` file, and central's pgBackRest repository.

Layout: s3://<bucket>/<prefix>/<site slug>/<dump name>, and the repository's files, path for path, under
<prefix>/<site slug>/pgbackrest/. Every upload is checked before it counts: the object's size and the
SHA-256 checksum S3 computed from the bytes it received (ChecksumAlgorithm='SHA256') against the local
file's; a download is checked the same way before it is handed over. Only after a checked upload are
older copies pruned, and only this site's dumps older than retention_days, never the newest: a failed
upload leaves everything, local and remote, as it was.

boto3 does the transfers (multipart above 64 MiB, retries); credentials come from its usual chain
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment, AWS_PROFILE, an instance role), never
from the settings file.
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from bacpipes.errors import UserError
from bacpipes.replication import slug
from bacpipes.settings import OffsiteSettings

PART_SIZE = 64 * 2**20  # multipart threshold and part size: few parts, little memory per part
TRANSFERS = 8  # files in flight at once when mirroring a folder (one request's latency each, not bandwidth)
PITR = "pgbackrest"  # the repository's folder beside the dumps
_DUMP = re.compile(r"-(\d{8}T\d{6}Z)\.dump$")  # central.backups.dump_name's stamp
_INFO_FILES = ("archive.info", "archive.info.copy", "backup.info", "backup.info.copy")  # rewritten in place


class OffsiteError(UserError):
    """The store refused or could not be reached, or a copy does not match its file: the message names
    the cause (credentials, bucket, endpoint, checksum) and what was left as it was."""


@dataclass(frozen=True)
class Copy:
    key: str
    name: str  # the key below the site's folder
    size: int
    modified: datetime

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "size": self.size, "modified": self.modified.isoformat()}


@dataclass
class Upload:
    """One checked upload, and the site's copies pruned after it."""

    url: str
    size: int
    sha256: str  # base64, as S3 reports it
    deleted: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"url": self.url, "size": self.size, "sha256": self.sha256, "deleted": list(self.deleted)}


@dataclass
class Sync:
    """A folder mirrored: files uploaded (checked), left alone (already there), remote files deleted."""

    url: str
    uploaded: list[str] = field(default_factory=list)
    unchanged: int = 0
    deleted: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"url": self.url, "uploaded": len(self.uploaded), "unchanged": self.unchanged,
                "deleted": len(self.deleted)}


# --- checksums -----------------------------------------------------------------------------------


def sha256_of(path: Path, part_size: int | None = None) -> str:
    """The file's SHA-256 as S3 reports it (base64). With part_size, that of a multipart object: S3's
    composite checksum, the SHA-256 of the parts' SHA-256 digests."""
    whole, parts = hashlib.sha256(), hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(part_size or 2**20):
            if part_size:
                parts.update(hashlib.sha256(chunk).digest())
            else:
                whole.update(chunk)
    return base64.b64encode((parts if part_size else whole).digest()).decode()


# --- the store -----------------------------------------------------------------------------------


class Store:
    """The site's folder in the bucket. Every call turns the store's refusals into an OffsiteError."""

    def __init__(self, conf: OffsiteSettings, site_id: str) -> None:
        if not conf.bucket:
            raise UserError("[offsite] bucket is not set")
        self.conf = conf
        self.bucket = conf.bucket
        self.site = slug(site_id)
        self.folder = "/".join(p for p in (conf.prefix.strip("/"), self.site) if p) + "/"
        session = boto3.session.Session()
        self.client = session.client(
            "s3", endpoint_url=conf.endpoint_url,
            region_name=conf.region or session.region_name or "us-east-1",
            config=Config(connect_timeout=conf.connect_timeout_s, read_timeout=120,
                          retries={"max_attempts": 3, "mode": "standard"},
                          max_pool_connections=2 * TRANSFERS,
                          s3={"addressing_style": conf.addressing_style},
                          # a checksum only where we ask for one (SHA-256): some stores refuse CRC32 trailers
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"),
        )
        self.transfer = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE)

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key or self.folder}"

    @contextmanager
    def _errors(self, doing: str, key: str | None = None) -> Iterator[None]:
        """The store's refusals as OffsiteErrors that say what to change; `key`: the object concerned (a
        404 is then a missing copy, not a missing bucket)."""
        where = self.conf.endpoint_url or "AWS S3"
        try:
            yield
        except OffsiteError:
            raise
        except NoCredentialsError:
            raise OffsiteError(f"{doing}: no credentials for the off-site store: set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment") from None
        except EndpointConnectionError as exc:
            raise OffsiteError(f"{doing}: cannot reach the off-site store at {where}: {exc}") from None
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if key is not None and code in ("NoSuchKey", "404"):
                raise OffsiteError(f"{doing}: there is no {self.url(key)} (bacpipes offsite list shows the "
                                   "copies)") from None
            if code in ("NoSuchBucket", "404"):
                raise OffsiteError(f"{doing}: bucket {self.bucket!r} does not exist at {where}") from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId",
                        "AuthorizationHeaderMalformed", "403") or status == 403:
                raise OffsiteError(
                    f"{doing}: the off-site store at {where} refused the credentials or their rights on "
                    f"bucket {self.bucket!r} ({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                ) from None
            raise OffsiteError(f"{doing}: the off-site store at {where} answered {code}: "
                               f"{error.get('Message', exc)}") from None
        except (BotoCoreError, Boto3Error, OSError) as exc:  # timeouts, TLS, failed transfers, local files
            raise OffsiteError(f"{doing}: {exc}") from None

    def check(self) -> None:
        """Reach the bucket with these credentials (the first call of every operation: its errors are the
        clearest: wrong credentials, no such bucket, no endpoint)."""
        with self._errors(f"reaching {self.url()}"):
            self.client.head_bucket(Bucket=self.bucket)

    # --- one file --------------------------------------------------------------------------------

    def upload(self, path: Path, name: str | None = None) -> Upload:
        """Upload `path` as <folder>/<name> (default its file name) and check it; nothing is deleted."""
        path = Path(path)
        key = self.folder + (name or path.name)
        self.check()
        return Upload(self.url(key), path.stat().st_size, self._put(key, path))

    def _put(self, key: str, path: Path) -> str:
        """Upload one file with S3's SHA-256 and check it; the checksum."""
        with self._errors(f"uploading {path} to {self.url(key)}"):
            if path.stat().st_size < PART_SIZE:  # one request (upload_file's machinery costs more)
                with path.open("rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256")
            else:
                self.client.upload_file(str(path), self.bucket, key, Config=self.transfer,
                                        ExtraArgs={"ChecksumAlgorithm": "SHA256"})
        return self.verify(key, path)

    def verify(self, key: str, path: Path) -> str:
        """The object at `key` has the file's size and SHA-256 (S3's own, computed from what it received;
        composite for a multipart object); its checksum, else OffsiteError."""
        with self._errors(f"checking {self.url(key)}", key):
            head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        return self._compare(key, path, head)

    def _compare(self, key: str, path: Path, head: dict[str, Any]) -> str:
        """verify's check, on a HEAD's (or GET's) answer."""
        with self._errors(f"checking {self.url(key)}"):
            remote = head.get("ChecksumSHA256")
            size = path.stat().st_size
            if head["ContentLength"] != size:
                raise OffsiteError(f"{self.url(key)} has {head['ContentLength']} bytes, {path} {size}: "
                                   "the copy is not good")
            if not remote:
                raise OffsiteError(f"{self.url(key)} has no SHA-256 checksum (uploaded without one, or the "
                                   "store does not keep them): it cannot be checked")
            remote = remote.split("-")[0]  # a multipart object's "<composite>-<parts>"
            part_size = None
            if size >= PART_SIZE:  # multipart, most likely: its part size is that of its first part
                first = self.client.head_object(Bucket=self.bucket, Key=key, PartNumber=1)
                part_size = first["ContentLength"] if first.get("PartsCount") else None
            if remote == sha256_of(path, part_size):
                return remote
        raise OffsiteError(f"checksum mismatch: {self.url(key)} is not a copy of {path} (SHA-256 {remote} "
                           "there): the copy is not good")

    def fetch(self, name: str, into: Path) -> Path:
        """Download <folder>/<name> into the folder `into`, checked against the store's checksum before it
        gets its name (a failed or corrupt download leaves no file that looks like a backup)."""
        key = self.folder + name
        target = Path(into) / Path(name).name
        self._download(key, target)
        return target

    def _download(self, key: str, target: Path, size: int | None = None) -> None:
        """size: the object's, when known and small it comes in one GET, checked on that GET's answer."""
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        answer = None
        try:
            with self._errors(f"downloading {self.url(key)}", key):
                # 0600 from the start: dumps hold password hashes
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    if size is not None and size < PART_SIZE:
                        answer = self.client.get_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
                        shutil.copyfileobj(answer["Body"], out)
                    else:
                        self.client.download_fileobj(self.bucket, key, out, Config=self.transfer)
            if answer is None:
                self.verify(key, partial)
            else:
                self._compare(key, partial, answer)
            partial.rename(target)
        finally:
            partial.unlink(missing_ok=True)

    # --- the site's dumps ------------------------------------------------------------------------

    def _objects(self, below: str) -> list[dict[str, Any]]:
        with self._errors(f"listing {self.url(below)}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=below)
            return [obj for page in pages for obj in page.get("Contents", [])]

    def copies(self) -> list[Copy]:
        """This site's files (not the pgBackRest repository's), oldest first by name's time then upload."""
        found = [Copy(o["Key"], o["Key"][len(self.folder):], o["Size"], o["LastModified"])
                 for o in self._objects(self.folder) if not o["Key"].startswith(self.folder + PITR + "/")]
        return sorted(found, key=lambda c: (_stamp(c) or c.modified, c.name))

    def prune(self, retention_days: int | None = None, now: datetime | None = None) -> list[str]:
        """Delete this site's dumps made more than retention_days ago (by the time in their names, as
        local pruning does by their files'); other objects and other sites' are never touched, nor the
        newest dump however old it is."""
        cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days or self.conf.retention_days)
        dumps = [(stamp, c) for c in self.copies() if (stamp := _stamp(c)) is not None]  # oldest first
        old = [c for stamp, c in dumps[:-1] if stamp < cutoff]
        self._delete([c.key for c in old])
        return [self.url(c.key) for c in old]

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys a call
            batch = keys[start:start + 1000]
            with self._errors(f"deleting {len(batch)} object(s) in {self.url()}"):
                done = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            if done.get("Errors"):
                first = done["Errors"][0]
                raise OffsiteError(f"deleting {first['Key']} in {self.url()}: {first.get('Message')}")

    # --- a folder (central's pgBackRest repository) ----------------------------------------------

    def sync_folder(self, local: Path, retention_days: int) -> Sync:
        """Mirror the pgBackRest repository at `local` into <folder>/pgbackrest/: new files and files
        whose size changed are uploaded and checked, the info files (rewritten in place) every time.
        Files pgBackRest expired are deleted off-site after everything else uploaded.

        Refused when the off-site copy has a backup younger than retention_days that the local
        repository lacks: pgBackRest never expires those, so the local one was lost or replaced, and
        mirroring it would overwrite the off-site backup.info, the one way to the older backups."""
        local = Path(local)
        if not local.is_dir():  # an empty mirror would delete the off-site copy
            raise UserError(f"the pgBackRest repository {local} is not there ([backups] pitr_repo)")
        below = self.folder + PITR + "/"
        done = Sync(self.url(below))
        self.check()
        remote = {o["Key"]: o for o in self._objects(below)}
        self._refuse_lost_backups(local, below, remote, retention_days)
        wanted: set[str] = set()
        todo: list[tuple[str, Path]] = []
        with self._errors(f"reading {local}"):  # the server's user's: run as it, or as root
            for path in sorted(local.rglob("*")):
                if path.is_symlink() or not path.is_file() or path.name.endswith(".tmp"):
                    continue  # `latest` links to a backup folder; .tmp files are being written
                key = below + path.relative_to(local).as_posix()
                wanted.add(key)
                there = remote.get(key)
                if there and there["Size"] == path.stat().st_size and path.name not in _INFO_FILES:
                    done.unchanged += 1  # pgBackRest never rewrites a backup or WAL file in place
                else:
                    todo.append((key, path))
        with ThreadPoolExecutor(TRANSFERS) as pool:  # a repository is many small files: latency adds up
            list(pool.map(lambda item: self._put(*item), todo))
        done.uploaded = [key for key, _ in todo]
        gone = sorted(set(remote) - wanted)
        self._delete(gone)
        done.deleted = [self.url(k) for k in gone]
        return done

    def _refuse_lost_backups(self, local: Path, below: str, remote: dict[str, Any], days: int) -> None:
        cutoff = datetime.now(UTC) - timedelta(days=days)
        for key in remote:
            relative = key[len(below):]
            if not re.fullmatch(r"backup/[^/]+/backup\.info", relative):
                continue
            with self._errors(f"reading {self.url(key)}", key):
                text = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read().decode()
            mine = local / relative
            lost = backup_labels(text) - (backup_labels(mine.read_text()) if mine.exists() else set())
            recent = sorted(label for label in lost if _label_time(label) >= cutoff)
            if recent:
                raise OffsiteError(
                    f"the off-site copy {self.url(below)} has backups the local repository {local} lacks "
                    f"({', '.join(recent)}), younger than {days} days: the local repository was lost or "
                    "replaced. Nothing was uploaded or deleted. Fetch the copy back (bacpipes offsite fetch "
                    "--pitr) or move it aside in the bucket first")

    def fetch_folder(self, into: Path) -> list[Path]:
        """The repository's off-site copy into the empty (or new) folder `into`, every file checked."""
        into = Path(into)
        if into.exists() and any(into.iterdir()):
            raise UserError(f"{into} is not empty: fetch into a new folder")
        below = self.folder + PITR + "/"
        self.check()
        objects = self._objects(below)
        if not objects:
            raise OffsiteError(f"no pgBackRest repository at {self.url(below)}")
        into.mkdir(mode=0o700, parents=True, exist_ok=True)
        todo = []
        for obj in objects:
            target = into / obj["Key"][len(below):]
            if into.resolve() not in target.resolve().parents:
                raise OffsiteError(f"{self.url(obj['Key'])} points outside {into}: refused")
            todo.append((obj["Key"], target, obj["Size"]))
        with ThreadPoolExecutor(TRANSFERS) as pool:
            list(pool.map(lambda item: self._download(*item), todo))
        return [target for _, target, _ in todo]


def _stamp(copy: Copy) -> datetime | None:
    match = _DUMP.search(copy.name)
    return datetime.strptime(match[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) if match else None


def backup_labels(text: str) -> set[str]:
    """The backups a pgBackRest backup.info lists (its [backup:current] section)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # labels end in F, D or I
    parser.read_string(text)
    return set(parser["backup:current"]) if parser.has_section("backup:current") else set()


def _label_time(label: str) -> datetime:
    """When a backup started: its label's last stamp (20261129-084500F_20261130-010000I)."""
    stamp = re.findall(r"(\d{8}-\d{6})[FDI]", label)[-1]
    return datetime.strptime(stamp, "%Y%m%d-%H%M%S").replace(tzinfo=UTC)


# --- what the flows and the CLI call -------------------------------------------------------------


def upload_backup(conf: OffsiteSettings, site_id: str, path: Path, now: datetime | None = None) -> Upload:
    """A backup dump off-site, checked; then this site's off-site dumps past retention pruned."""
    store = Store(conf, site_id)
    done = store.upload(Path(path))
    done.deleted = store.prune(now=now)
    return done


def sync_repository(conf: OffsiteSettings, site_id: str, repo: Path, retention_days: int) -> Sync:
    """Central's pgBackRest repository off-site (after each of its backups); retention_days: pgBackRest's
    own ([backups] pitr_retention_days), which decides what it expires."""
    return Store(conf, site_id).sync_folder(repo, retention_days)
