"""TLS material for replication: the certificates themselves, and a real PostgreSQL 15 that must accept
the replication role only over TLS 1.3 with a client certificate from our CA."""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bacpipes.certs import (
    client_conninfo,
    ensure_ca,
    hba_lines,
    issue_client,
    issue_server,
    server_settings,
)
from bacpipes.pg_binaries import give_to_server_user
from tests.pgcluster import PgCluster

REPLICATOR = "bacpipes_central"


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- certificates ------------------------------------------------------------------------------------


def test_ca_is_reused_never_overwritten(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    crt, key = ensure_ca(directory)
    before = crt.read_bytes(), key.read_bytes()
    assert ensure_ca(directory) == (crt, key)
    assert (crt.read_bytes(), key.read_bytes()) == before
    assert _mode(directory) == 0o700
    ca = _load(crt)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_server_cert_has_ip_and_dns_sans_and_verifies(tmp_path: Path) -> None:
    ca_crt, _ = ensure_ca(tmp_path)
    crt, key = issue_server(tmp_path, "central", ["127.0.0.1", "central.example"])
    cert = _load(crt)
    cert.verify_directly_issued_by(_load(ca_crt))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["central.example"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "127.0.0.1"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (_mode(crt), _mode(key)) == (0o644, 0o600)


def test_client_cert_cn_is_the_role(tmp_path: Path) -> None:
    ca_crt, _ = ensure_ca(tmp_path)
    crt, key = issue_client(tmp_path, REPLICATOR)
    cert = _load(crt)
    cert.verify_directly_issued_by(_load(ca_crt))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == REPLICATOR
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert _mode(key) == 0o600


def test_reissue_replaces_the_leaf_not_the_ca(tmp_path: Path) -> None:
    ca_crt, _ = ensure_ca(tmp_path)
    ca_bytes = ca_crt.read_bytes()
    crt, key = issue_client(tmp_path, REPLICATOR)
    first = crt.read_bytes(), key.read_bytes()
    issue_client(tmp_path, REPLICATOR)
    assert (crt.read_bytes(), key.read_bytes()) != first
    assert _mode(key) == 0o600
    assert ca_crt.read_bytes() == ca_bytes
    with pytest.raises(ValueError):
        issue_client(tmp_path, "ca")  # would replace the CA's own files


def test_issuing_without_a_ca_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        issue_client(tmp_path, REPLICATOR)


def test_hba_order_first_match_wins() -> None:
    lines = [line.split() for line in hba_lines(REPLICATOR).splitlines() if line and not line.startswith("#")]
    hostssl = lines.index(["hostssl", "all", REPLICATOR, "0.0.0.0/0", "cert", "clientcert=verify-full"])
    nossl = lines.index(["hostnossl", "all", REPLICATOR, "0.0.0.0/0", "reject"])
    final = lines.index(["host", "all", "all", "0.0.0.0/0", "reject"])
    assert hostssl < nossl < final
    assert lines.index(["host", "all", "postgres", "127.0.0.1/32", "trust"]) < final
    assert "#" in hba_lines(REPLICATOR)


def test_client_conninfo(tmp_path: Path) -> None:
    params = conninfo_to_dict(client_conninfo(tmp_path, REPLICATOR, "central.example", 5433, "bacpipes"))
    root = tmp_path.resolve()
    assert params["sslmode"] == "verify-full"
    assert params["sslrootcert"] == str(root / "ca.crt")
    assert params["sslcert"] == str(root / f"{REPLICATOR}.crt")
    assert params["sslkey"] == str(root / f"{REPLICATOR}.key")
    assert params["user"] == REPLICATOR
    assert all(Path(params[k]).is_absolute() for k in ("sslrootcert", "sslcert", "sslkey"))


# --- a real server -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PgCluster, Path]]:
    """A cluster configured by this module's settings and hba. The certificates live under the cluster's
    root (owned by postgres): pytest's tmp dirs are 0700 root, which the server could not traverse."""
    cluster = PgCluster()
    try:
        certs = cluster.root / "certs"
        ensure_ca(certs)
        issue_server(certs, "central", ["127.0.0.1", "localhost"])
        issue_client(certs, REPLICATOR)
        give_to_server_user(certs)
        cluster.settings.update(server_settings(certs, "central"))
        cluster.init()
        (cluster.data / "pg_hba.conf").write_text(hba_lines(REPLICATOR))
        cluster.start()
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {REPLICATOR} LOGIN REPLICATION")
        yield cluster, certs
    finally:
        cluster.cleanup()


def _conninfo(cluster: PgCluster, certs: Path, **overrides: str) -> str:
    base = client_conninfo(certs, REPLICATOR, "127.0.0.1", cluster.port, "postgres")
    return make_conninfo(base, connect_timeout="5", **overrides)


def _refused(conninfo: str) -> str:
    with pytest.raises(psycopg.OperationalError) as excinfo, psycopg.connect(conninfo):
        pass
    return str(excinfo.value)


def test_client_certificate_connects_over_tls13(tls_cluster: tuple[PgCluster, Path]) -> None:
    cluster, certs = tls_cluster
    with psycopg.connect(_conninfo(cluster, certs)) as conn:
        row = conn.execute(
            "SELECT version, current_user FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert row == ("TLSv1.3", REPLICATOR)


def test_without_tls_is_refused(tls_cluster: tuple[PgCluster, Path]) -> None:
    cluster, _ = tls_cluster
    message = _refused(make_conninfo(cluster.dsn(), user=REPLICATOR, sslmode="disable"))
    assert "rejects connection" in message


def test_tls_without_client_certificate_is_refused(tls_cluster: tuple[PgCluster, Path]) -> None:
    cluster, _ = tls_cluster
    # sslcertmode=disable: never send a certificate, even one found in ~/.postgresql.
    message = _refused(
        make_conninfo(cluster.dsn(), user=REPLICATOR, sslmode="require", sslcertmode="disable")
    )
    assert "requires a valid client certificate" in message


def test_client_certificate_from_another_ca_is_refused(
    tls_cluster: tuple[PgCluster, Path], tmp_path: Path
) -> None:
    cluster, certs = tls_cluster
    other = tmp_path / "other"
    ensure_ca(other, name="Impostor CA")
    crt, key = issue_client(other, REPLICATOR)
    assert "unknown ca" in _refused(_conninfo(cluster, certs, sslcert=str(crt), sslkey=str(key)))


def test_tls12_client_is_refused(tls_cluster: tuple[PgCluster, Path]) -> None:
    cluster, certs = tls_cluster
    assert "protocol version" in _refused(_conninfo(cluster, certs, ssl_max_protocol_version="TLSv1.2"))
