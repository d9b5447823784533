"""The api role's systemd template unit."""

from __future__ import annotations

from conftest import render


def unit(**overrides) -> str:
    variables = {"inventory_hostname": "api1", "groups": {"loadbalancers": ["api1"]}, **overrides}
    return render("api", "api@.service.j2", variables)


def directives(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def test_unit_runs_uvicorn_on_the_instance_port():
    text = unit()
    assert directives(text, "ExecStart") == [
        "/opt/rag-photographie/venv/bin/uvicorn app.api:app --host 127.0.0.1 --port %i --workers 1 --no-access-log"
    ]
    assert directives(text, "User") == ["rag-photographie"]
    assert directives(text, "WorkingDirectory") == ["/opt/rag-photographie/src"]
    assert "API_PORT=%i" in directives(text, "Environment")
    assert '"API_VERSION=1.0.0"' in directives(text, "Environment")


def test_unit_follows_name_module_workers_and_version():
    text = unit(api_name="shop", api_module="shop.main:application", api_workers=4, api_version="2.3.4")
    assert directives(text, "ExecStart") == [
        "/opt/shop/venv/bin/uvicorn shop.main:application --host 127.0.0.1 --port %i --workers 4 --no-access-log"
    ]
    assert '"API_VERSION=2.3.4"' in directives(text, "Environment")
    assert directives(text, "User") == ["shop"]


def test_api_host_that_is_not_a_load_balancer_binds_its_default_ipv4():
    text = unit(
        groups={"loadbalancers": ["lb1"]},
        ansible_facts={"default_ipv4": {"address": "10.0.0.11"}},
    )
    assert "--host 10.0.0.11 " in directives(text, "ExecStart")[0]


def test_extra_environment_and_arguments():
    text = unit(api_environment={"LOG_LEVEL": "debug"}, api_uvicorn_extra_args=["--timeout-keep-alive", "10"])
    assert '"LOG_LEVEL=debug"' in directives(text, "Environment")
    assert directives(text, "ExecStart")[0].endswith("--workers 1 --no-access-log --timeout-keep-alive 10")


def test_uvicorn_access_log_only_when_asked():
    assert directives(unit(api_access_log=True), "ExecStart")[0].endswith("--port %i --workers 1")


def test_restarts_on_failure_and_is_enabled_for_multi_user():
    text = unit()
    assert directives(text, "Restart") == ["on-failure"]
    assert directives(text, "WantedBy") == ["multi-user.target"]
