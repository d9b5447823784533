"""HTTPS on the load balancer: a real ACME certificate from pebble, the TLS
profile measured by testssl.sh, the hardening headers, and every mode.

`acme` runs pebble (prepare.yml) and is the client of every check here:
lb-tls is reached by name over the scenario's Docker network.
"""

from __future__ import annotations

import datetime
import json
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lbtest import SITE, get_host, headers, playbook, recap, said, tail, tls11_client_works, tls11_handshake

LB = "lb-tls"
ROOT = "/tmp/pebble-root.pem"


@pytest.fixture(scope="module")
def lb():
    return get_host(LB)


@pytest.fixture(scope="module")
def acme():
    host = get_host("acme")
    # The root that issued the load balancer's chain, from pebble's
    # management interface (verified against pebble's listener certificate).
    host.run_expect([0], f"curl -sf --cacert /etc/pebble/cert.pem -o {ROOT} https://acme:15000/roots/0")
    return host


def test_acme_chain_verifies_against_pebble_root(acme):
    run = acme.run(f"curl -sf --cacert {ROOT} https://{LB}/health")
    assert run.rc == 0, run.stderr
    assert json.loads(run.stdout)["status"] == "ok"
    issuer = acme.check_output(
        f"openssl s_client -connect {LB}:443 -servername {LB} </dev/null 2>/dev/null | openssl x509 -noout -issuer"
    )
    assert "Pebble Intermediate" in issuer, issuer


def test_certificate_files_and_renewal(lb):
    key = lb.file(f"/etc/nginx/tls/{SITE}/privkey.pem")
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)
    assert lb.service("certbot.timer").is_enabled
    assert lb.service("certbot.timer").is_running
    dropin = lb.check_output("systemctl cat certbot.service")
    assert "REQUESTS_CA_BUNDLE=/etc/ssl/acme-listener.pem" in dropin
    run = lb.run(
        "REQUESTS_CA_BUNDLE=/etc/ssl/acme-listener.pem"
        # --server: a dry run otherwise swaps in Let's Encrypt's staging CA.
        f" certbot renew --dry-run --cert-name {SITE} --no-random-sleep-on-renew --server https://acme:14000/dir"
    )
    assert run.rc == 0, run.stdout + run.stderr
    assert "succeeded" in run.stdout + run.stderr


def test_http_redirects_to_https_except_the_challenge(lb, acme):
    got = headers(acme, f"http://{LB}/a/b?c=1", ROOT)
    assert " 301" in got["status"], got
    assert got["location"] == f"https://{LB}/a/b?c=1"
    lb.run_expect(
        [0],
        "echo probe > /var/www/acme-challenge/.well-known/acme-challenge/probe || "
        "(mkdir -p /var/www/acme-challenge/.well-known/acme-challenge && "
        "echo probe > /var/www/acme-challenge/.well-known/acme-challenge/probe)",
    )
    assert acme.check_output(f"curl -s http://{LB}/.well-known/acme-challenge/probe") == "probe"


@pytest.mark.parametrize("path", ["/", "/health", "/missing"])
def test_hsts_and_hardening_headers_on_real_responses(acme, path):
    got = headers(acme, f"https://{LB}{path}", ROOT)
    assert got["status"].startswith("HTTP/2 "), got
    assert int(got["strict-transport-security"].split("=")[1]) >= 15552000
    assert got["x-content-type-options"] == "nosniff"
    assert got["x-frame-options"] == "DENY"
    assert got["server"] == "nginx"


def test_unknown_host_and_sni_are_rejected(acme):
    # HTTP: the default server closes the connection without an answer (444),
    # with a reset (reset_timedout_connection, nginx.conf): curl's rc 56.
    assert acme.run(f"curl -s -m 5 -H 'Host: other.example' http://{LB}/").rc == 56
    # HTTPS: a handshake for another name is refused.
    ip = acme.check_output(f"getent ahostsv4 {LB} | awk 'NR==1 {{print $1}}'")
    run = acme.run(f"curl -s -m 5 --cacert {ROOT} --resolve other.example:443:{ip} https://other.example/")
    assert run.rc == 35, run


def test_testssl_finds_nothing_high_and_only_tls12_tls13(acme):
    report = f"/tmp/lbtest-testssl-{uuid.uuid4().hex[:8]}.json"
    acme.run(
        f"timeout 300 testssl --quiet --color 0 --warnings off --add-ca {ROOT} -p -s -f -P -S -h -U "
        f"--jsonfile {report} https://{LB}/ >{report}.out 2>&1"
    )
    # Debian's testssl.sh package installs the command as `testssl`.
    assert acme.file(report).exists, acme.check_output(f"tail -20 {report}.out")
    findings = json.loads(acme.file(report).content_string)
    assert len(findings) > 20, findings
    bad = [f for f in findings if f.get("severity") in ("HIGH", "CRITICAL")]
    by_id = {f["id"]: f for f in findings}
    print(
        "testssl:",
        len(findings),
        "findings;",
        {s: sum(f.get("severity") == s for f in findings) for s in ("OK", "INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL")},
    )
    assert bad == [], bad
    for protocol in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert by_id[protocol]["finding"].startswith("not offered"), by_id[protocol]
    for protocol in ("TLS1_2", "TLS1_3"):
        assert by_id[protocol]["finding"].startswith("offered"), by_id[protocol]


def test_a_tls11_handshake_is_refused_by_the_server(acme):
    # The control: this client completes TLS 1.1 with a server that offers it,
    # so its failure against lb-tls is lb-tls's refusal.
    tls11_client_works(acme)
    ok, said = tls11_handshake(acme, f"{LB}:443", LB)
    assert not ok, said
    assert "alert" in said, said


def key_leaked(key_pem: str, text: str) -> bool:
    """Whether any line of the key's base64 body shows in `text`: raw, or
    escaped on one line as Ansible prints a multi-line value."""
    body = [line for line in key_pem.splitlines() if line and not line.startswith("-----")]
    return any(line in text for line in body) or "".join(body) in text.replace("\\n", "")


def make_certificate(name: str, days: int = 30) -> tuple[str, str, str]:
    """A CA and a certificate for `name` signed by it, valid until `days` from
    now (negative: expired): (ca_pem, cert_pem, key_pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Company CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=max(0, -days) + 30))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem).decode(), cert.public_bytes(pem).decode(), key_pem.decode()


# What acme mode installs for the site, which any other mode removes: the
# lineage, the deploy hook that would install a renewal into the site's TLS
# directory, and the certbot drop-in.
ACME_RESIDUE = (
    f"/etc/letsencrypt/renewal/{SITE}.conf",
    f"/etc/letsencrypt/live/{SITE}",
    f"/etc/letsencrypt/archive/{SITE}",
    f"/usr/local/sbin/nginx-lb-deploy-{SITE}",
    "/etc/systemd/system/certbot.service.d/nginx-lb.conf",
)


def not_after(host, path: str) -> datetime.datetime:
    """The expiry of the certificate at `path` on `host`."""
    pem = host.file(path).content_string
    return x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc


def in_acme_mode(lb) -> None:
    """The inventory's mode, acme, with its lineage: converge back to it when
    an earlier test left another mode (which removed the lineage)."""
    if not all(lb.file(path).exists for path in ACME_RESIDUE):
        run = playbook()
        assert run.returncode == 0, tail(run)
    assert all(lb.file(path).exists for path in ACME_RESIDUE)


def test_the_acme_deploy_hook_keeps_the_previous_certificate_when_nginx_refuses_the_new_one(lb, acme):
    """certbot runs the hook after a renewal: here the renewed lineage holds a
    key that does not match its certificate. nginx -t refuses it; the hook
    puts the previous files back, exits 1, and nginx keeps serving."""
    in_acme_mode(lb)
    live = f"/etc/letsencrypt/live/{SITE}"
    tls = f"/etc/nginx/tls/{SITE}"
    saved = f"/root/lbtest-live-{uuid.uuid4().hex[:8]}"
    before = lb.check_output(f"sha256sum {tls}/fullchain.pem {tls}/privkey.pem")
    served = served_fingerprint(acme)
    # Worker processes change at a reload: the same ones after means no reload
    # (-x: not those of an earlier reload still "shutting down").
    workers = lb.check_output("pgrep -d, -xf 'nginx: worker process'")
    _ca, _cert, other_key = make_certificate(LB)
    lb.run_expect([0], f"cp -a {live} {saved}")
    try:
        lb.run_expect([0], f"rm {live}/privkey.pem && cat > {live}/privkey.pem <<'EOF'\n{other_key}EOF")
        hook = lb.run(f"RENEWED_LINEAGE={live} /usr/local/sbin/nginx-lb-deploy-{SITE}")
    finally:
        lb.run(f"rm -rf {live} && mv {saved} {live}")
    assert hook.rc == 1, hook
    assert f"nginx refused the new certificate of {live}; kept the previous one" in hook.stderr, hook
    assert lb.check_output(f"sha256sum {tls}/fullchain.pem {tls}/privkey.pem") == before
    assert not lb.file(f"{tls}/fullchain.pem.previous").exists
    assert lb.run("nginx -t").rc == 0
    assert lb.check_output("pgrep -d, -xf 'nginx: worker process'") == workers
    assert served_fingerprint(acme) == served


def test_provided_mode_serves_the_given_certificate_and_refuses_a_wrong_key(lb, acme):
    """From acme (the inventory's mode): leaving it removes what it installed."""
    in_acme_mode(lb)
    ca, cert, key = make_certificate(LB)
    _ca, _cert, other_key = make_certificate(LB)
    before = lb.file(f"/etc/nginx/tls/{SITE}/fullchain.pem").content_string

    run = playbook(
        extra_vars={"nginx_lb_tls_mode": "provided", "nginx_lb_tls_certificate": cert, "nginx_lb_tls_key": other_key}
    )
    assert run.returncode != 0
    assert "the key does NOT match the certificate" in said(run), tail(run)
    assert all(c["changed"] == 0 for c in recap(run).values()), tail(run)
    assert lb.file(f"/etc/nginx/tls/{SITE}/fullchain.pem").content_string == before
    # The detector finds the key as Ansible would print it (JSON-escaped):
    assert key_leaked(other_key, json.dumps({"msg": other_key}))
    assert not key_leaked(other_key, run.stdout + run.stderr)

    run = playbook(
        extra_vars={"nginx_lb_tls_mode": "provided", "nginx_lb_tls_certificate": cert, "nginx_lb_tls_key": key}
    )
    assert run.returncode == 0, tail(run)
    assert not key_leaked(key, run.stdout + run.stderr)
    # Nothing of acme mode is left: no lineage, hook or drop-in, and with no
    # other lineage on the host no certbot and no timer, so no renewal can
    # replace the operator's certificate.
    assert [path for path in ACME_RESIDUE if lb.file(path).exists] == []
    assert not lb.package("certbot").is_installed
    assert lb.run("systemctl cat certbot.timer").rc != 0
    assert not lb.file("/etc/letsencrypt").exists
    company_ca = f"/tmp/lbtest-company-ca-{uuid.uuid4().hex[:8]}.pem"
    acme.run_expect([0], f"cat > {company_ca} <<'EOF'\n{ca}EOF")
    assert acme.run(f"curl -sf --cacert {company_ca} https://{LB}/health").rc == 0
    assert lb.file(f"/etc/nginx/tls/{SITE}/privkey.pem").mode == 0o600


def served_fingerprint(acme) -> str:
    """The fingerprint of the certificate lb-tls serves, as the client sees it."""
    return acme.check_output(
        f"openssl s_client -connect {LB}:443 -servername {LB} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint"
    )


def test_an_expired_provided_certificate_is_refused_before_any_change(lb, acme):
    _ca, cert, key = make_certificate(LB, days=-1)
    served = served_fingerprint(acme)
    run = playbook(
        extra_vars={"nginx_lb_tls_mode": "provided", "nginx_lb_tls_certificate": cert, "nginx_lb_tls_key": key}
    )
    assert run.returncode != 0
    not_after = x509.load_pem_x509_certificate(cert.encode()).not_valid_after_utc.strftime("%Y%m%d%H%M%SZ")
    assert "The provided TLS material is unusable: the key matches the certificate (" in said(run), tail(run)
    assert f"), which expired on {not_after}." in said(run), tail(run)
    assert "TASK [nginx_lb : Assert that the key matches the certificate, which is still valid]" in run.stdout
    assert all(c["changed"] == 0 for c in recap(run).values()), tail(run)
    assert not key_leaked(key, run.stdout + run.stderr)
    # Still serving the certificate it had.
    assert served_fingerprint(acme) == served


def test_switching_off_selfsigned_acme_converges_then_changes_nothing(lb, acme):
    run = playbook(extra_vars={"nginx_lb_tls_mode": "off"})
    assert run.returncode == 0, tail(run)
    # Off: nothing listens on 443 (curl -k would take any certificate).
    assert lb.check_output("ss -Htln 'sport = :443'") == ""
    assert acme.run(f"curl -sk -m 5 https://{LB}/").rc == 7
    assert json.loads(acme.check_output(f"curl -s http://{LB}/health"))["status"] == "ok"
    assert [path for path in ACME_RESIDUE if lb.file(path).exists] == []

    run = playbook(extra_vars={"nginx_lb_tls_mode": "selfsigned"})
    assert run.returncode == 0, tail(run)
    tls = f"/etc/nginx/tls/{SITE}"
    lb_cert = lb.file(f"{tls}/fullchain.pem").content_string
    selfsigned = f"/tmp/lbtest-selfsigned-{uuid.uuid4().hex[:8]}.pem"
    acme.run_expect([0], f"cat > {selfsigned} <<'EOF'\n{lb_cert}EOF")
    assert acme.run(f"curl -sf --cacert {selfsigned} https://{LB}/health").rc == 0

    # The same certificate signed again for 30 days: less than a third of its
    # 365 days left. The next run signs it again for its whole life, and
    # nginx serves the new one.
    lb.run_expect(
        [0],
        f"openssl x509 -req -in {tls}/selfsigned.csr -key {tls}/privkey.pem -days 30"
        f" -copy_extensions copyall -out {tls}/fullchain.pem && systemctl reload nginx",
    )
    now = datetime.datetime.now(datetime.UTC)
    assert not_after(lb, f"{tls}/fullchain.pem") < now + datetime.timedelta(days=31)
    short = served_fingerprint(acme)
    run = playbook(extra_vars={"nginx_lb_tls_mode": "selfsigned"})
    assert run.returncode == 0, tail(run)
    assert not_after(lb, f"{tls}/fullchain.pem") > now + datetime.timedelta(days=364)
    assert served_fingerprint(acme) != short

    # Back to the inventory's mode, acme: a fresh certificate from pebble.
    run = playbook()
    assert run.returncode == 0, tail(run)
    assert acme.run(f"curl -sf --cacert {ROOT} https://{LB}/health").rc == 0
    again = playbook()
    assert again.returncode == 0, tail(again)
    assert {h: c["changed"] for h, c in recap(again).items()} == {LB: 0}, tail(again)
