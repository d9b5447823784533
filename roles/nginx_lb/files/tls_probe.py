# What tasks/probe.yml reads of the site's certificate, on the host, so a
# self-signed certificate that needs nothing costs no crypto work: prints
# one JSON object (empty when there is no certificate or python3-cryptography
# is not installed yet) with the subject alternative names, the expiry
# (epoch seconds), the key type, whether the key matches the certificate and
# the key file's mode. Arguments: the certificate and the key.
import datetime
import json
import os
import sys

found = {}
try:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

    with open(sys.argv[1], "rb") as handle:
        cert = x509.load_pem_x509_certificate(handle.read())
    with open(sys.argv[2], "rb") as handle:
        key = load_pem_private_key(handle.read(), None)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    expiry = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)  # noqa: UP017 - Python 3.10 (Ubuntu 22.04) has no datetime.UTC
    public = [
        k.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo) for k in (cert.public_key(), key.public_key())
    ]
    found = {
        "sans": sorted(
            ["DNS:" + name for name in sans.get_values_for_type(x509.DNSName)]
            + ["IP:" + str(address) for address in sans.get_values_for_type(x509.IPAddress)]
        ),
        "cn": cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value,
        "not_after": int(expiry.timestamp()),
        "key": ("ec-" + key.curve.name) if isinstance(key, ec.EllipticCurvePrivateKey) else type(key).__name__,
        "key_matches": public[0] == public[1],
        "key_mode": oct(os.stat(sys.argv[2]).st_mode & 0o777),
    }
except Exception:  # noqa: BLE001, S110 - no certificate, no key or no library yet: the tasks then make them
    pass
print(json.dumps(found))
