"""TLS material for logical replication between a site database and the central database.

The replication role authenticates with a client certificate (`cert` auth: the certificate CN is the
role), not a password: there is no shared secret to leak through a DSN, a log or a config file, and a
site is revoked by re-keying it. The server accepts TLS 1.3 only, and clients use `sslmode=verify-full`
so they check both the CA and that the host name or IP is in the server certificate — a connection to
anything else fails instead of silently talking to an impostor.

One small CA per deployment signs everything; it lives in the same directory as the certificates it
signs and is never overwritten, since every issued certificate depends on it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from psycopg.conninfo import make_conninfo

from bacpipes.errors import MissingFile, UserError

CA_NAME = "ca"
KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700
# Certificates start a little in the past so a peer whose clock is slightly behind still accepts them.
_CLOCK_SKEW = dt.timedelta(minutes=5)

PrivateKey = ec.EllipticCurvePrivateKey


# --- files -------------------------------------------------------------------------------------------


def _paths(directory: Path, name: str) -> tuple[Path, Path]:
    return directory / f"{name}.crt", directory / f"{name}.key"


def _check_name(name: str) -> None:
    """Names become file names: refuse ones that escape the directory or would replace the CA."""
    if not name or name == CA_NAME or name.startswith(".") or "/" in name or "\0" in name:
        raise UserError(f"unusable certificate name {name!r}")


def _ensure_dir(directory: Path) -> None:
    """0700: the directory holds private keys."""
    if not directory.is_dir():
        directory.mkdir(mode=DIR_MODE, parents=True)
        directory.chmod(DIR_MODE)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file and rename, so a reader never sees a half-written key or certificate, and
    the mode is set before any bytes land (a key is never briefly world-readable)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask and ignored for an existing file
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _save(directory: Path, name: str, cert: x509.Certificate, key: PrivateKey) -> tuple[Path, Path]:
    crt_path, key_path = _paths(directory, name)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(key_path, key_pem, KEY_MODE)
    _write(crt_path, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)
    return crt_path, key_path


def _load_ca(directory: Path) -> tuple[x509.Certificate, PrivateKey]:
    crt_path, key_path = _paths(directory, CA_NAME)
    if not (crt_path.exists() and key_path.exists()):
        # Creating one here would silently start a second trust root (e.g. a typo in the directory).
        raise MissingFile(f"no CA in {directory}: run ensure_ca first")
    try:
        cert = x509.load_pem_x509_certificate(crt_path.read_bytes())
    except ValueError as exc:
        raise UserError(f"{crt_path} is not a PEM certificate ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:  # TypeError: encrypted with a password
        raise UserError(f"{key_path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, PrivateKey):
        raise UserError(f"{key_path} is not an EC private key")
    return cert, key


# --- certificates ------------------------------------------------------------------------------------


def _new_key() -> PrivateKey:
    """EC P-256: small, fast, and accepted by every OpenSSL that supports TLS 1.3."""
    return ec.generate_private_key(ec.SECP256R1())


def _builder(
    subject_cn: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def ensure_ca(directory: Path, name: str = "BacPipes CA", days: int = 3650) -> tuple[Path, Path]:
    """Return the CA in `directory`, creating it only if absent: replacing it would orphan every
    certificate already issued (and installed on sites)."""
    directory = Path(directory)
    crt_path, key_path = _paths(directory, CA_NAME)
    if crt_path.exists() and key_path.exists():
        _load_ca(directory)  # fail now on a corrupt CA rather than at the first issue
        return crt_path, key_path
    _ensure_dir(directory)
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(name, subject, key.public_key(), days)
        # path_length=0: this CA signs leaf certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _save(directory, CA_NAME, cert, key)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """CA: signs certificates and CRLs. Leaf: signs the TLS handshake (ECDSA) and nothing else."""
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    directory: Path,
    name: str,
    cn: str,
    usage: x509.ObjectIdentifier,
    days: int,
    san: x509.SubjectAlternativeName | None = None,
) -> tuple[Path, Path]:
    """A leaf certificate signed by the directory's CA; an existing one of that name is replaced."""
    directory = Path(directory)
    _check_name(name)
    ca_cert, ca_key = _load_ca(directory)
    key = _new_key()
    builder = (
        _builder(cn, ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return _save(directory, name, builder.sign(ca_key, hashes.SHA256()), key)


def _general_name(host: str) -> x509.GeneralName:
    """verify-full matches an IP literal only against an IP SAN, and a name only against a DNS SAN."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue_server(directory: Path, name: str, hosts: list[str], days: int = 825) -> tuple[Path, Path]:
    """Server certificate `name` for every host or IP clients will put in `host=` (verify-full checks
    the SAN, not the CN)."""
    if not hosts:
        raise UserError("a server certificate needs at least one host")
    san = x509.SubjectAlternativeName([_general_name(h) for h in hosts])
    return _issue(directory, name, hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, days, san)


def issue_client(directory: Path, user: str, days: int = 825) -> tuple[Path, Path]:
    """Client certificate for database role `user`: PostgreSQL `cert` auth logs in as the CN."""
    return _issue(directory, user, user, ExtendedKeyUsageOID.CLIENT_AUTH, days)


# --- PostgreSQL configuration ------------------------------------------------------------------------


def server_settings(directory: Path, name: str) -> dict[str, str]:
    """postgresql.conf settings for a server presenting certificate `name`; `ssl_ca_file` is what
    client certificates are checked against."""
    crt_path, key_path = _paths(Path(directory).resolve(), name)
    return {
        "ssl": "on",
        "ssl_cert_file": str(crt_path),
        "ssl_key_file": str(key_path),
        "ssl_ca_file": str(Path(directory).resolve() / f"{CA_NAME}.crt"),
        "ssl_min_protocol_version": "TLSv1.3",
    }


def hba_lines(replication_users: str | list[str], admin_user: str = "postgres") -> str:
    """pg_hba.conf: each replication role only over TLS with a verified client certificate; the admin
    only from this machine; everyone else refused."""
    users = [replication_users] if isinstance(replication_users, str) else list(replication_users)
    lines = [
        "# First matching line wins, so the order is the policy:",
        "# a replication role gets in only over TLS with a client certificate whose CN is the role,",
        "# is refused outright without TLS, local administration is trusted, the rest is refused.",
    ]
    for user in users:
        lines += [
            f"hostssl   all  {user}  0.0.0.0/0     cert  clientcert=verify-full",
            f"hostssl   all  {user}  ::/0          cert  clientcert=verify-full",
            f"hostnossl all  {user}  0.0.0.0/0     reject",
            f"hostnossl all  {user}  ::/0          reject",
        ]
    lines += [
        "local     all  all                               trust",
        f"host      all  {admin_user}  127.0.0.1/32  trust",
        f"host      all  {admin_user}  ::1/128       trust",
        "host      all  all  0.0.0.0/0     reject",
        "host      all  all  ::/0          reject",
        "",
    ]
    return "\n".join(lines)


# The deployment's pg_hba.conf policy (deploy/pg_hba.conf has exactly these lines; tests compare them).
# First match wins. No trust anywhere: the superuser only through the socket as the OS user postgres
# (peer), BacPipes' own roles (bacpipes db roles) with a password on loopback, the superuser never from
# another machine, the replication roles (`bacpipes site link`) only over TLS with a client certificate
# signed by the deployment's CA whose CN is the role, everything else refused.
DEPLOY_HBA_POLICY: tuple[tuple[str, ...], ...] = (
    ("local", "all", "postgres", "peer"),
    ("host", "all", "all", "127.0.0.1/32", "scram-sha-256"),
    ("host", "all", "all", "::1/128", "scram-sha-256"),
    ("host", "all", "postgres", "0.0.0.0/0", "reject"),
    ("host", "all", "postgres", "::/0", "reject"),
    ("hostssl", "all", "all", "0.0.0.0/0", "cert", "clientcert=verify-full"),
    ("hostssl", "all", "all", "::/0", "cert", "clientcert=verify-full"),
    ("host", "all", "all", "0.0.0.0/0", "reject"),
    ("host", "all", "all", "::/0", "reject"),
)


def deploy_hba() -> str:
    """pg_hba.conf for a deployment: the same policy as deploy/pg_hba.conf, line for line."""
    widths = [max(len(line[i]) for line in DEPLOY_HBA_POLICY if len(line) > i) for i in range(6)]
    lines = ["# pg_hba.conf (first matching line wins): local postgres by peer, BacPipes roles with a",
             "# password on loopback, replication roles only with a client certificate, the rest refused."]
    for line in DEPLOY_HBA_POLICY:
        fields = list(line) if line[0] != "local" else [line[0], line[1], line[2], "", *line[3:]]
        lines.append("  ".join(f.ljust(widths[i] if i < len(fields) - 1 else 0)
                               for i, f in enumerate(fields)).rstrip())
    return "\n".join(lines) + "\n"


def client_conninfo(directory: Path, user: str, host: str, port: int, dbname: str) -> str:
    """libpq conninfo for `user` (e.g. a subscription's CONNECTION): verify-full checks the server
    against our CA and its host name; the client certificate is the credential, no password."""
    directory = Path(directory).resolve()
    crt_path, key_path = _paths(directory, user)
    return make_conninfo(
        host=host,
        port=port,
        dbname=dbname,
        user=user,
        sslmode="verify-full",
        sslrootcert=str(directory / f"{CA_NAME}.crt"),
        sslcert=str(crt_path),
        sslkey=str(key_path),
    )
