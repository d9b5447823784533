"""HTTPS and hardening in the nginx_lb site template, rendered per mode."""

from __future__ import annotations

import re

import pytest
from conftest import api_host

API = [api_host("api1", "10.0.0.1", [8001, 8002])]


def servers(config: str) -> list[str]:
    """The text of each top-level server block."""
    return re.findall(r"^server \{\n(.*?)\n\}", config, re.DOTALL | re.MULTILINE)


def test_off_serves_plain_http_only(render_site):
    config = render_site(API, nginx_lb_tls_mode="off")
    assert "ssl" not in config
    assert "Strict-Transport-Security" not in config
    (server,) = servers(config)
    assert "listen 80 default_server backlog=4096;" in server
    assert "proxy_pass http://rag_photographie_backend;" in server


@pytest.mark.parametrize("mode", ["selfsigned", "provided", "acme"])
def test_tls_modes_redirect_http_and_serve_https(render_site, mode):
    config = render_site(API, nginx_lb_tls_mode=mode)
    http, https = servers(config)
    assert "return 301 https://$host$request_uri;" in http
    assert "proxy_pass" not in http
    assert "listen 443 ssl default_server backlog=4096;" in https
    assert "ssl_certificate /etc/nginx/tls/rag-photographie/fullchain.pem;" in https
    assert "ssl_certificate_key /etc/nginx/tls/rag-photographie/privkey.pem;" in https
    assert ("/.well-known/acme-challenge/" in http) == (mode == "acme")


def test_mozilla_intermediate_profile(render_site):
    https = servers(render_site(API))[-1]
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in https
    ciphers = re.search(r"ssl_ciphers (\S+);", https).group(1).split(":")
    assert len(ciphers) == 6
    assert all(c.startswith("ECDHE-") and ("GCM" in c or "CHACHA20-POLY1305" in c) for c in ciphers)
    assert "ssl_prefer_server_ciphers on;" in https
    assert "ssl_session_cache shared:" in https
    assert "ssl_stapling" not in https


def test_http2_syntax_follows_the_nginx_version(render_site):
    old = servers(render_site(API, _nginx_lb_version="1.22.1"))[-1]
    assert "listen 443 ssl http2 default_server backlog=4096;" in old
    assert "http2 on;" not in old
    new = servers(render_site(API, _nginx_lb_version="1.26.3"))[-1]
    assert "http2 on;" in new
    assert "http2" not in new.split("http2 on;")[0]
    assert "http2" not in render_site(API, nginx_lb_http2=False)


def test_hsts_and_headers_are_sent_always_and_never_overridden(render_site):
    config = render_site(API, nginx_lb_hsts_max_age=15552000, nginx_lb_hsts_include_subdomains=True)
    https = servers(config)[-1]
    assert 'add_header Strict-Transport-Security "max-age=15552000; includeSubDomains" always;' in https
    assert 'add_header X-Content-Type-Options "nosniff" always;' in https
    assert 'add_header X-Frame-Options "DENY" always;' in https
    # A location with its own add_header would drop the server's headers.
    for location in re.findall(r"location [^{]*\{(.*?)\}", config, re.DOTALL):
        assert "add_header" not in location


def test_hardening_directives_in_every_server(render_site):
    config = render_site(API, nginx_lb_server_names=["api.example.com"])
    for server in servers(config):
        assert "server_tokens off;" in server
        assert "client_max_body_size 10m;" in server
        assert "client_body_timeout 30s;" in server


def test_unknown_hosts_get_a_closing_default_server(render_site):
    config = render_site(API, nginx_lb_server_names=["api.example.com"])
    default, http, https = servers(config)
    assert "return 444;" in default
    assert "ssl_reject_handshake on;" in default
    assert "listen 80 default_server backlog=4096;" in default
    assert "default_server" not in http + https
    assert "server_name api.example.com;" in https
    # Turned off, the site itself is the catch-all again.
    config = render_site(API, nginx_lb_server_names=["api.example.com"], nginx_lb_reject_unknown_hosts=False)
    assert "return 444;" not in config


def test_rate_and_connection_limits_are_optional(render_site):
    assert "limit_req" not in render_site(API)
    config = render_site(API, nginx_lb_rate_limit="20r/s", nginx_lb_rate_limit_burst=10, nginx_lb_conn_limit=50)
    assert "limit_req_zone $binary_remote_addr zone=rag_photographie_backend_req:10m rate=20r/s;" in config
    https = servers(config)[-1]
    assert "limit_req zone=rag_photographie_backend_req burst=10 nodelay;" in https
    assert "limit_conn rag_photographie_backend_conn 50;" in https
    assert "limit_req_status 429;" in https


def test_non_default_https_port_in_the_redirect(render_site):
    http = servers(render_site(API, nginx_lb_https_port=8443))[0]
    assert "return 301 https://$host:8443$request_uri;" in http
