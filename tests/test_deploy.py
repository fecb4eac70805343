"""Deployment files: compose schema, the Dockerfile's build step for real, Kubernetes, systemd, ops docs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from services.config import PROJECT_ROOT, Settings
from tests.support import clean_env

DEPLOY = PROJECT_ROOT / "deploy"


def test_compose_file_is_valid_and_complete() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    schema = json.loads((PROJECT_ROOT / "tests" / "data" / "compose_spec.json").read_text())
    schema.pop("$schema", None)  # the 2021 file names a draft URI jsonschema does not know; it is draft-07
    jsonschema.Draft7Validator(schema).validate(compose)
    services = compose["services"]
    assert {"postgres", "redis", "postfix", "migrate", "gateway", "worker", "web"} <= set(services)
    for name in ("postgres", "redis", "gateway", "worker", "web"):
        assert "healthcheck" in services[name], name
    assert services["worker"]["deploy"]["replicas"] >= 2
    for name in ("gateway", "worker", "web"):
        assert services[name]["command"] == [name]
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert (DEPLOY / services["gateway"]["build"]["dockerfile"].removeprefix("deploy/")).is_file()
    assert set(compose["volumes"]) == {"pgdata", "redisdata", "postfixqueue"}
    env_example = (DEPLOY / "channelshift.env.example").read_text()
    assert "CHANNELSHIFT_DATABASE_URL=postgresql://" in env_example and "CHANNELSHIFT_REDIS_URL=" in env_example


def test_dockerfile_shape() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, re.MULTILINE)) == 2  # multi-stage
    assert re.search(r"^USER 10001:10001$", dockerfile, re.MULTILINE)  # non-root
    assert 'ENTRYPOINT ["channelshift"]' in dockerfile and "HEALTHCHECK" in dockerfile
    for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.MULTILINE):
        assert (PROJECT_ROOT / source).exists(), source


def test_dockerfile_build_step_produces_a_working_install(tmp_path: Path) -> None:
    """What `pip install .` in the build stage produces: migrations, static files and the CLI all present."""
    # the build context the Dockerfile copies (pyproject, README, services), so no stale build/ of the
    # working tree can slip into the wheel and nothing is written into the checkout
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", source)
    shutil.copy(PROJECT_ROOT / "README.md", source)
    shutil.copytree(PROJECT_ROOT / "services", source / "services", ignore=shutil.ignore_patterns("__pycache__"))
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(source)],
        check=True,
        capture_output=True,
    )
    [wheel] = list(wheel_dir.glob("channelshift-*.whl"))
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    installed = site / "services"
    assert (installed / "store" / "migrations" / "versions" / "0001_initial_schema.py").is_file()
    assert (installed / "store" / "migrations" / "script.py.mako").is_file()
    assert (installed / "web" / "static" / "chart.umd.min.js").is_file()
    assert (installed / "py.typed").is_file()
    env = {
        **clean_env(),
        "PYTHONPATH": str(site),
        "CHANNELSHIFT_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite",
        "CHANNELSHIFT_RULES_DIR": str(PROJECT_ROOT / "routing_rules"),
        "CHANNELSHIFT_TEMPLATES_DIR": str(PROJECT_ROOT / "templates"),
    }
    code = "import services, sys; from services.cli import main; sys.exit(main(sys.argv[1:]))"
    for args in (["db", "upgrade"], ["rules", "check"]):
        result = subprocess.run(
            [sys.executable, "-c", code, *args], env=env, cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
    origin = subprocess.run(
        [sys.executable, "-c", "import services; print(services.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert origin.startswith(str(site))


def _k8s_documents() -> list[dict[str, object]]:
    documents = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name == "tree-volumes-patch.yaml":  # a patch, not a resource (tests/test_k8s_tree.py)
            continue
        documents.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return documents


def test_kubernetes_manifests() -> None:
    documents = _k8s_documents()
    kinds = [(d["kind"], d["metadata"]["name"]) for d in documents if "metadata" in d]  # type: ignore[index]
    for expected in [
        ("Deployment", "channelshift-gateway"),
        ("Deployment", "channelshift-worker"),
        ("Deployment", "channelshift-web"),
        ("Service", "channelshift-gateway"),
        ("Service", "channelshift-web"),
        ("ConfigMap", "channelshift-templates"),
        ("ConfigMap", "channelshift-rules"),
        ("Secret", "channelshift-secrets"),
        ("Job", "channelshift-migrate"),
        ("HorizontalPodAutoscaler", "channelshift-worker"),
    ]:
        assert expected in kinds, expected
    for deployment in (d for d in documents if d["kind"] == "Deployment"):
        spec = deployment["spec"]["template"]["spec"]  # type: ignore[index]
        [container] = spec["containers"]
        ports = {p["containerPort"] for p in container["ports"]}
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["port"] in ports
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["securityContext"]["runAsNonRoot"] is True
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        listen = env.get("CHANNELSHIFT_HEALTH_LISTEN") or env.get("CHANNELSHIFT_WEB_LISTEN")
        assert listen and int(listen.rsplit(":", 1)[1]) == container["readinessProbe"]["httpGet"]["port"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["rules"]["configMap"]["name"] == "channelshift-rules"
        assert volumes["templates"]["configMap"]["name"] == "channelshift-templates"
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (DEPLOY / "k8s" / resource).is_file(), resource
    assert [patch["path"] for patch in kustomization["patches"]] == ["tree-volumes-patch.yaml"]


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    env_file = tmp_path / "channelshift.env"
    env_file.write_text("CHANNELSHIFT_REDIS_URL=redis://127.0.0.1:6379/0\n")
    executable = Path(sys.executable).parent / "channelshift"
    units = []
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        text = unit.read_text().replace("/opt/channelshift/bin/channelshift", str(executable))
        text = text.replace("/etc/channelshift/channelshift.env", str(env_file))
        name = unit.name.replace("@.service", "@1.service")
        (tmp_path / name).write_text(text)
        units.append(str(tmp_path / name))
        assert "DynamicUser=yes" in text and "ProtectSystem=strict" in text and "NoNewPrivileges=yes" in text
    result = subprocess.run(
        [analyze, "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_operations_doc_lists_every_setting() -> None:
    operations = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    for name in Settings.model_fields:
        assert f"CHANNELSHIFT_{name.upper()}" in operations, name
