"""Off-site copies against a real S3-compatible server (moto's, on loopback, signatures checked): an upload
is checked by size and S3's SHA-256, a corrupt copy is caught, pruning keeps other sites' copies and the
newest, wrong credentials are one clear error with the local dump kept, the backup flow's copy fetched
back restores the same rows, and central's pgBackRest repository is mirrored and fetched back whole."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from bacpipes import offsite
from bacpipes.cli import main
from bacpipes.cli.servers import PostgresCluster, free_port
from bacpipes.errors import UserError
from bacpipes.offsite import OffsiteError, Store, sha256_of, upload_backup
from bacpipes.settings import OffsiteSettings, load_settings
from bacpipes.waiting import poll_until
from central import pitr
from flows.ops import backup_flow
from tests import runbook
from tests.pgcluster import PgCluster
from tests.s3_server import S3Server, s3_server
from tests.test_backups import contents, empty_database, fill
from tests.test_pitr import archived, count, settings_file  # noqa: F401  (its fixture too)

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def conf(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> OffsiteSettings:
    """The store, a prefix of this test's own, and the credentials in the environment as in production."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return OffsiteSettings(enabled=True, endpoint_url=s3.endpoint_url, bucket=s3.bucket,
                           prefix=f"t-{uuid.uuid4().hex[:8]}/backups", retention_days=30)


def keys(s3: S3Server, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def stamped(day: datetime) -> str:
    return f"{day:%Y%m%dT%H%M%SZ}"


def test_upload_is_checked_listed_and_fetched_back(conf: OffsiteSettings, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offsite, "PART_SIZE", 5 * 2**20)  # S3's smallest part: a multipart upload cheaply
    small, large = tmp_path / "site_1-20261128T010000Z.dump", tmp_path / "site_1-20261129T010000Z.dump"
    small.write_bytes(os.urandom(1000))
    large.write_bytes(os.urandom(11 * 2**20))  # three parts: S3's checksum is the composite one
    store = Store(conf, "Site-1")
    for path in (small, large):
        done = store.upload(path)
        assert done.url == f"s3://{conf.bucket}/{conf.prefix}/site_1/{path.name}"
        assert done.size == path.stat().st_size
    assert done.sha256 == sha256_of(large, 5 * 2**20) != sha256_of(large)
    assert [(c.name, c.size) for c in store.copies()] == [(small.name, 1000), (large.name, 11 * 2**20)]
    fetched = store.fetch(large.name, tmp_path / "back")
    assert fetched.read_bytes() == large.read_bytes()
    assert oct(fetched.stat().st_mode & 0o777) == "0o600" and list(fetched.parent.iterdir()) == [fetched]
    with pytest.raises(OffsiteError, match=r"there is no .*/site_1/site_1-20200101T000000Z\.dump"):
        store.fetch("site_1-20200101T000000Z.dump", tmp_path / "back")


def test_a_corrupt_copy_is_caught(s3: S3Server, conf: OffsiteSettings, tmp_path: Path) -> None:
    dump = tmp_path / "site_1-20261129T010000Z.dump"
    dump.write_bytes(b"a" * 4096)
    store = Store(conf, "Site-1")
    key = f"{conf.prefix}/site_1/{dump.name}"
    store.upload(dump)
    # the same size, other bytes, under the same key (with the store's own SHA-256 of them)
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=b"b" * 4096, ChecksumAlgorithm="SHA256")
    with pytest.raises(OffsiteError, match="checksum mismatch"):
        store.verify(key, dump)
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=b"a" * 4096)  # right bytes, no checksum kept
    with pytest.raises(OffsiteError, match="no SHA-256 checksum"):
        store.verify(key, dump)
    with pytest.raises(OffsiteError, match="no SHA-256 checksum"):  # a download is checked the same way
        store.fetch(dump.name, tmp_path / "back")
    assert list((tmp_path / "back").iterdir()) == []  # and leaves nothing that looks like a backup


def test_prune_keeps_other_sites_copies_and_the_newest(s3: S3Server, conf: OffsiteSettings,
                                                       tmp_path: Path) -> None:
    def put(site: str, name: str) -> None:
        path = tmp_path / name
        path.write_bytes(name.encode())
        Store(conf, site).upload(path)

    old, older = stamped(NOW - timedelta(days=31)), stamped(NOW - timedelta(days=45))
    for name in (f"site_1-{older}.dump", f"site_1-{old}.dump", "site_1-notes.txt"):
        put("Site-1", name)
    for name in (f"site_10-{older}.dump", f"site_10-{old}.dump"):  # "site_1" is a prefix of its name
        put("Site-10", name)
    root = f"{conf.prefix}/"
    # only old dumps: the newest of them stays, however old
    assert Store(conf, "Site-1").prune(now=NOW) == [f"s3://{s3.bucket}/{root}site_1/site_1-{older}.dump"]
    fresh = tmp_path / f"site_1-{stamped(NOW)}.dump"
    fresh.write_bytes(b"new")
    done = upload_backup(conf, "Site-1", fresh, now=NOW)  # what the flow does: upload, check, prune
    assert done.deleted == [f"s3://{s3.bucket}/{root}site_1/site_1-{old}.dump"]
    assert keys(s3, root) == sorted([f"{root}site_1/{fresh.name}", f"{root}site_1/site_1-notes.txt",
                                     f"{root}site_10/site_10-{older}.dump",
                                     f"{root}site_10/site_10-{old}.dump"])


def test_store_errors_are_clear_and_nothing_is_lost(s3: S3Server, conf: OffsiteSettings, db_dsn: str,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    kept = tmp_path / f"site_1-{stamped(NOW - timedelta(days=60))}.dump"
    kept.write_bytes(b"an old copy")
    Store(conf, "Site-1").upload(kept)  # what a successful run would prune
    before = keys(s3, conf.prefix)
    config = tmp_path / "site.toml"
    config.write_text(f'[site]\nid = "Site-1"\n[database]\ndsn = "{db_dsn}"\n'
                      f'[backups]\ndir = "{tmp_path / "backups"}"\n'
                      f'[offsite]\nenabled = true\nendpoint_url = "{conf.endpoint_url}"\n'
                      f'bucket = "{conf.bucket}"\nprefix = "{conf.prefix}"\nretention_days = 30\n')
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert main(runbook.command("db backup", {"site.toml": config})) == 2
    error = capsys.readouterr().err
    assert "refused the credentials" in error and "not-the-secret" not in error
    assert len(list((tmp_path / "backups").glob("site_1-*.dump"))) == 1  # the new dump stays
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    assert keys(s3, conf.prefix) == before  # nothing pruned
    for change, message in (({"bucket": "no-such-bucket"}, "bucket 'no-such-bucket' does not exist"),
                            ({"endpoint_url": f"http://127.0.0.1:{free_port()}"}, "cannot reach")):
        with pytest.raises(OffsiteError, match=message):
            upload_backup(conf.model_copy(update=change), "Site-1", kept)
    assert keys(s3, conf.prefix) == before
    assert main(runbook.command("db backup", {"site.toml": config})) == 0  # the store back: uploaded, pruned
    assert len(keys(s3, conf.prefix)) == len(before) and kept.name not in str(keys(s3, conf.prefix))


def test_backup_flow_uploads_and_the_fetched_copy_restores(prefect: None, s3: S3Server, conf: OffsiteSettings,
                                                           db_dsn: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    fill(db_dsn)
    config = tmp_path / "site.toml"
    config.write_text(f'[site]\nid = "Site-1"\n[database]\ndsn = "{db_dsn}"\n'
                      f'[backups]\ndir = "{tmp_path / "backups"}"\n'
                      f'[offsite]\nenabled = true\nendpoint_url = "{conf.endpoint_url}"\n'
                      f'bucket = "{conf.bucket}"\nprefix = "{conf.prefix}"\n')
    result = backup_flow(str(config))
    name = Path(result["path"]).name
    assert result["offsite"]["url"] == f"s3://{conf.bucket}/{conf.prefix}/site_1/{name}"
    assert result["offsite"]["size"] == result["size"] and result["offsite"]["deleted"] == []
    Path(result["path"]).unlink()  # the site's disk is gone: only the off-site copy is left
    assert main(runbook.command("offsite list", {"site.toml": config})) == 0
    assert name in capsys.readouterr().out
    files = {"NAME": name, "DIR": tmp_path / "fetched", "site.toml": config}
    assert main(runbook.command("offsite fetch NAME", files)) == 0
    with empty_database() as target:
        files["DIR/NAME"], files["DSN"] = tmp_path / "fetched" / name, target
        assert main(runbook.command("db restore", files)) == 0
        assert contents(target) == contents(db_dsn)


# --- central's pgBackRest repository ---------------------------------------------------------------


def backup_info(*labels: str) -> str:
    """A pgBackRest backup.info as far as the mirror reads it (labels in [backup:current])."""
    lines = ["[backrest]", 'backrest-format=5', "", "[backup:current]"]
    lines += [f'{label}={json.dumps({"backup-type": label[-1].lower()})}' for label in labels]
    return "\n".join([*lines, "", "[db]", 'db-id=1', ""])


def label(days_ago: float, kind: str = "F") -> str:
    return f"{datetime.now(UTC) - timedelta(days=days_ago):%Y%m%d-%H%M%S}{kind}"


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not p.is_symlink()}


def test_pitr_repository_is_mirrored_and_fetched_back(s3: S3Server, conf: OffsiteSettings,
                                                       tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    backups, wal = repo / "backup" / "central", repo / "archive" / "central" / "15-1" / "0000000100000000"
    expired, kept = label(40), label(2)
    newer = f"{kept}_{label(0.5, 'I')}"  # an incremental on the kept full backup
    for folder in (backups / expired, backups / kept, wal):
        folder.mkdir(parents=True)
    (repo / "archive" / "central" / "archive.info").write_text("[db]\ndb-id=1\n")
    (backups / "backup.info").write_text(backup_info(expired, kept))
    (backups / expired / "backup.manifest").write_text("old set")
    (backups / kept / "backup.manifest").write_text("kept set")
    (wal / "000000010000000000000001-aa.zst").write_bytes(os.urandom(300))
    (backups / "latest").symlink_to(kept)
    store = Store(conf, "central")

    first = store.sync_folder(repo, retention_days=30)
    assert (len(first.uploaded), first.unchanged, first.deleted) == (5, 0, [])
    # pgBackRest expires the old set, takes an incremental, archives more WAL
    (backups / expired / "backup.manifest").unlink()
    (backups / expired).rmdir()
    (backups / "backup.info").write_text(backup_info(kept, newer))
    (backups / newer).mkdir()
    (backups / newer / "backup.manifest").write_text("new set")
    (wal / "000000010000000000000002-bb.zst").write_bytes(os.urandom(300))
    second = store.sync_folder(repo, retention_days=30)
    below = f"{conf.prefix}/central/pgbackrest/"
    assert sorted(second.uploaded) == sorted(below + k for k in (
        "archive/central/archive.info", "backup/central/backup.info",
        f"backup/central/{newer}/backup.manifest", "archive/central/15-1/0000000100000000/"
        "000000010000000000000002-bb.zst"))
    assert second.unchanged == 2
    assert second.deleted == [f"s3://{conf.bucket}/{below}backup/central/{expired}/backup.manifest"]

    with pytest.raises(UserError, match="not empty"):
        store.fetch_folder(repo)
    store.fetch_folder(tmp_path / "fetched")
    assert tree(tmp_path / "fetched") == tree(repo)

    # the local repository lost and begun anew: mirroring it would cut the way to the off-site backups
    before = keys(s3, below)
    (backups / "backup.info").write_text(backup_info(label(0.1)))
    with pytest.raises(OffsiteError, match=f"lacks \\({kept}, {newer}\\)"):
        store.sync_folder(repo, retention_days=30)
    assert keys(s3, below) == before
    with pytest.raises(UserError, match="is not there"):
        store.sync_folder(tmp_path / "nowhere", retention_days=30)


def test_credentials_never_in_the_settings_file(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text('[offsite]\nenabled = true\nbucket = "b"\naws_secret_access_key = "s3cr3t"\n')
    with pytest.raises(UserError, match=r"offsite\.aws_secret_access_key: Extra inputs") as refused:
        load_settings(config)
    assert "s3cr3t" not in str(refused.value)
    config.write_text("[offsite]\nenabled = true\n")
    with pytest.raises(UserError, match="needs a bucket"):
        load_settings(config)
    assert load_settings(None).offsite.enabled is False  # off by default


def test_pitr_repository_copy_restores(archived: tuple[PgCluster, pitr.Stanza], pitr_dir: Path,  # noqa: F811
                                       conf: OffsiteSettings) -> None:
    """`central backup` mirrors the repository; fetched back on another folder, `central restore` from it
    brings back the rows up to a noted time."""
    cluster, stanza = archived
    config = settings_file(pitr_dir, cluster, stanza)
    with config.open("a") as f:
        f.write(f'[site]\nid = "central"\n[offsite]\nenabled = true\nendpoint_url = "{conf.endpoint_url}"\n'
                f'bucket = "{conf.bucket}"\nprefix = "{conf.prefix}"\n')
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE readings (id int PRIMARY KEY, value float8)")
        conn.execute("INSERT INTO readings SELECT i, i * 0.5 FROM generate_series(1, 1000) i")
        assert main(["central", "backup", "--full", "--config", str(config)]) == 0
        # pgBackRest keeps whole seconds: a target within the backup's last second finds no backup before it
        stopped = pitr.info(stanza)[-1].stopped + timedelta(seconds=1)
        poll_until(lambda: datetime.now(UTC) > stopped, 5, interval=0.05, what="the next second")
        conn.execute("INSERT INTO readings SELECT i, i * 0.5 FROM generate_series(1001, 1500) i")
        noted = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        conn.execute("DROP TABLE readings")
    pitr.check(stanza)  # the WAL past the noted time archived, then mirrored as the next backup would
    offsite.sync_repository(conf, "central", stanza.repo, retention_days=30)

    fetched = pitr_dir / "fetched"
    assert main(runbook.command("offsite fetch --pitr", {"REPO": fetched, "central.toml": config})) == 0
    elsewhere = pitr_dir / "elsewhere.toml"  # another host: the fetched repository, no server of its own
    elsewhere.write_text(f'[database]\ndsn = "{cluster.dsn()}"\n'
                         f'[backups]\npitr_dir = "{pitr_dir / "conf2"}"\npitr_repo = "{fetched}"\n')
    restored, port = pitr_dir / "restored", free_port()
    try:
        assert main(["central", "restore", "--to", noted.isoformat(), "--into", str(restored),
                     "--port", str(port), "--timeout", "120", "--config", str(elsewhere)]) == 0
        assert count(PostgresCluster(restored, port=port).dsn()) == (1500, 1, 1500)
    finally:
        PostgresCluster(restored, port=port).cleanup()
