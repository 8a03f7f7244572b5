"""A self-signed certificate for the fakes' TLS edges (localhost / 127.0.0.1), made once
per machine and trusted by hud_ray's wire through $HUD_RAY_TLS_CA_FILE (set on import of
tests.fakes.modal_fake, as installing a test CA would)."""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from pathlib import Path

DIR = Path(tempfile.gettempdir()) / "hud_ray_fake_tls"


def ensure_cert() -> tuple[str, str]:
    """(cert.pem, key.pem), made once: written to a temporary directory that is renamed
    into place whole, so every process sees both files or neither."""
    current = DIR / "current"
    cert, key = current / "cert.pem", current / "key.pem"
    if not cert.is_file():
        DIR.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=DIR))
        _write_pair(tmp)
        try:
            os.rename(tmp, current)
        except OSError:  # another process won: use its pair
            shutil.rmtree(tmp, ignore_errors=True)
    return str(cert), str(key)


def _write_pair(directory: Path) -> None:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(private.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    (directory / "key.pem").write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (directory / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
