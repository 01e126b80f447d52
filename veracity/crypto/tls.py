"""TLS material for the coordinator: a private CA and server certificates it signs.

The SuperLink (Flower's Fleet, Control and Runtime APIs on one port) and the admin API
serve TLS with a certificate from this CA; sites and clinics pin the CA certificate
(``ca.crt``). Keys are ECDSA P-256, private key files mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from veracity.errors import ConfigError, CryptoError

__all__ = [
    "DEFAULT_HOSTS",
    "TlsFiles",
    "certificate_hosts",
    "create_tls_material",
    "install_tls_material",
    "issue_server_certificate",
    "tls_files",
]

#: Names every coordinator certificate covers (loopback); ``--hostname`` adds to them.
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
_DEFAULT_HOSTS = DEFAULT_HOSTS


@dataclass(frozen=True)
class TlsFiles:
    """Where a coordinator's TLS files live."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    def exist(self) -> bool:
        """True when the CA certificate, server certificate and server key are present.

        The CA's key is there only when this coordinator issued its own certificate; an
        operator who brings a certificate (:func:`install_tls_material`) keeps it elsewhere.
        """
        return all(p.exists() for p in (self.ca_cert, self.server_cert, self.server_key))


def tls_files(tls_dir: Path) -> TlsFiles:
    """The file names used under ``tls_dir``."""
    return TlsFiles(
        ca_cert=tls_dir / "ca.crt",
        ca_key=tls_dir / "ca.key",
        server_cert=tls_dir / "server.crt",
        server_key=tls_dir / "server.key",
    )


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _hosts(hosts: tuple[str, ...]) -> tuple[str, ...]:
    """``hosts`` without duplicates, in order, each a usable DNS name or IP address."""
    seen: list[str] = []
    for host in hosts:
        name = host.strip().lower()
        try:
            name = str(ipaddress.ip_address(name))
        except ValueError:
            labels = name.rstrip(".").split(".")
            if (
                not name
                or not all(
                    label
                    and len(label) <= 63
                    and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
                    for label in labels
                )
                or any(label.startswith("-") or label.endswith("-") for label in labels)
            ):
                raise ConfigError(
                    f"--hostname {host!r} is neither a DNS name nor an IP address"
                ) from None
        if name not in seen:
            seen.append(name)
    return tuple(seen)


def certificate_hosts(cert_path: Path) -> tuple[str, ...]:
    """The DNS names and IP addresses a certificate's subjectAltName covers.

    Raises
    ------
    ConfigError
        If the file is not a PEM certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{cert_path} is not a PEM certificate: {err}") from err
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    names += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    return tuple(names)


def issue_server_certificate(
    files: TlsFiles,
    hosts: tuple[str, ...],
    *,
    organisation: str = "Veracity research network",
    valid_days: int = 825,
    now: dt.datetime | None = None,
) -> TlsFiles:
    """Issue a new server certificate and key for ``hosts`` from the coordinator's own CA.

    The CA (and so what sites and clinics pin) stays the same; the old server key and
    certificate are replaced atomically.

    Raises
    ------
    ConfigError
        If the CA's key is not here (the operator brought their own certificate) or a
        host is neither a DNS name nor an IP address.
    CryptoError
        If certificate generation fails.
    """
    hosts = _hosts(hosts)
    if not files.ca_key.exists():
        raise ConfigError(
            f"{files.ca_key} is missing: this coordinator serves a certificate it did not "
            "issue; install a new one with --tls-cert/--tls-key/--tls-ca"
        )
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(days=valid_days)
    try:
        ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{files.ca_key} is not an ECDSA key")
        server_key, server_cert = _server_certificate(
            ca_key, ca_cert.subject, hosts, organisation, start, end
        )
    except (ValueError, TypeError) as err:
        raise CryptoError(f"could not issue a server certificate: {err}") from err
    staging_key = files.server_key.with_suffix(".key.new")
    staging_key.unlink(missing_ok=True)
    _write_private(staging_key, server_key)
    staging_cert = files.server_cert.with_suffix(".crt.new")
    staging_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    os.replace(staging_key, files.server_key)
    os.replace(staging_cert, files.server_cert)
    return files


def install_tls_material(tls_dir: Path, *, cert: Path, key: Path, ca: Path) -> TlsFiles:
    """Serve the operator's own certificate: copy ``cert``, ``key`` and ``ca`` into ``tls_dir``.

    ``ca`` is what sites and clinics will pin (the certificate that issued ``cert``, or
    ``cert`` itself). The key is written 0600. Any earlier server certificate is replaced;
    an earlier CA key is removed (it would no longer be what anyone pins).

    Raises
    ------
    ConfigError
        If a file is unreadable, the key does not belong to the certificate, or ``ca``
        did not sign ``cert``.
    """
    try:
        leaf = x509.load_pem_x509_certificate(cert.read_bytes())
        issuer = x509.load_pem_x509_certificate(ca.read_bytes())
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"cannot read the TLS certificate, key or CA: {err}") from err
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if public != leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ConfigError(f"{key} is not the key of the certificate {cert}")
    try:
        leaf.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as err:
        raise ConfigError(f"{ca} did not issue {cert}: {err}") from err
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = tls_files(tls_dir)
    staging = files.server_key.with_suffix(".key.new")
    staging.unlink(missing_ok=True)
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.read_bytes())
    os.replace(staging, files.server_key)
    files.server_cert.write_bytes(cert.read_bytes())
    files.ca_cert.write_bytes(ca.read_bytes())
    files.ca_key.unlink(missing_ok=True)
    return files


def _server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    hosts: tuple[str, ...],
    organisation: str,
    start: dt.datetime,
    end: dt.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                    x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return server_key, server_cert


def create_tls_material(
    tls_dir: Path,
    *,
    organisation: str = "Veracity research network",
    hosts: tuple[str, ...] = _DEFAULT_HOSTS,
    valid_days: int = 825,
    now: dt.datetime | None = None,
) -> TlsFiles:
    """Create a CA and a server certificate for ``hosts`` under ``tls_dir``.

    Raises
    ------
    ConfigError
        If any of the files already exists (existing keys are never overwritten).
    CryptoError
        If certificate generation fails.
    """
    files = tls_files(tls_dir)
    for path in (files.ca_cert, files.ca_key, files.server_cert, files.server_key):
        if path.exists():
            raise ConfigError(f"{path} already exists; refusing to overwrite TLS material")
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(days=valid_days)
    try:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{organisation} CA"),
            ]
        )
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        server_key, server_cert = _server_certificate(
            ca_key, ca_name, _hosts(hosts), organisation, start, end
        )
    except (ValueError, TypeError) as err:
        raise CryptoError(f"could not create TLS certificates: {err}") from err
    _write_private(files.ca_key, ca_key)
    _write_private(files.server_key, server_key)
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    return files
