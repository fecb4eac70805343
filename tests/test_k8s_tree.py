"""Kubernetes: the rules and templates ConfigMaps mount every file at its path in the repository."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from services.config import PROJECT_ROOT
from services.reply.render import ReplyRenderer
from services.ruleset.loader import load_rules

K8S = PROJECT_ROOT / "deploy" / "k8s"
SCRIPT = K8S / "render_templates_configmap.py"
# (volume, ConfigMap file, repository folder, the parts of it that ship in the image instead)
TREES = [
    ("rules", "rules-configmap.yaml", PROJECT_ROOT / "routing_rules", ("examples",)),
    ("templates", "templates-configmap.yaml", PROJECT_ROOT / "templates", ()),
]


def _volumes() -> dict[str, dict[str, Any]]:
    patch = yaml.safe_load((K8S / "tree-volumes-patch.yaml").read_text(encoding="utf-8"))
    return {volume["name"]: volume["configMap"] for volume in patch["spec"]["template"]["spec"]["volumes"]}


def _contents(configmap_file: str) -> dict[str, bytes]:
    document = yaml.safe_load((K8S / configmap_file).read_text(encoding="utf-8"))
    found = {key: value.encode("utf-8") for key, value in document.get("data", {}).items()}
    found.update({key: base64.b64decode(value) for key, value in document.get("binaryData", {}).items()})
    return found


def mount_like_kubelet(volume: str, configmap_file: str, target: Path) -> Path:
    """The volume as the kubelet writes it: the items under a timestamped folder behind `..data`, and one
    link per top-level entry (`lists -> ..data/lists`); the loader follows links that stay inside the folder."""
    contents = _contents(configmap_file)
    payload = target / "..2026_12_02_07_00_00.000000001"
    for item in _volumes()[volume]["items"]:
        path = payload / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(contents[item["key"]])
    (target / "..data").symlink_to(payload.name)
    for entry in payload.iterdir():
        (target / entry.name).symlink_to(f"..data/{entry.name}")
    return target


def test_rendered_files_are_current() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("volume", "configmap_file", "source", "left_out"), TREES)
def test_every_file_has_an_item_at_its_repository_path(
    volume: str, configmap_file: str, source: Path, left_out: tuple[str, ...]
) -> None:
    files = {
        path.relative_to(source).as_posix(): path.read_bytes()
        for path in source.rglob("*")
        if path.is_file() and path.relative_to(source).parts[0] not in left_out
    }
    items = _volumes()[volume]["items"]
    contents = _contents(configmap_file)
    assert sorted(item["path"] for item in items) == sorted(files)
    for item in items:
        assert contents[item["key"]] == files[item["path"]], item["path"]
    assert set(contents) == {item["key"] for item in items}  # nothing in the ConfigMap that is not mounted


def test_the_dashboard_pages_and_nested_lists_are_mounted() -> None:
    """The paths the flat layout lost: templates/dashboard/ (web/dashboard.py) and routing_rules/lists/."""
    paths = {item["path"] for volume in _volumes().values() for item in volume["items"]}
    assert {"dashboard/dashboard.html.j2", "dashboard/_layout.html.j2", "lists/partner_domains.txt"} <= paths
    assert any(p.startswith("replies/_common/") for p in paths)


def test_a_pod_loads_the_rules_and_renders_from_the_mounted_tree(tmp_path: Path) -> None:
    rules = mount_like_kubelet("rules", "rules-configmap.yaml", tmp_path / "rules")
    templates = mount_like_kubelet("templates", "templates-configmap.yaml", tmp_path / "templates")
    shipped = load_rules(PROJECT_ROOT / "routing_rules", PROJECT_ROOT / "templates", with_model=False)
    mounted = load_rules(rules, templates, with_model=False, examples_dir=PROJECT_ROOT / "routing_rules" / "examples")
    assert mounted.lists == shipped.lists and mounted.lists
    assert mounted.templates == shipped.templates
    assert [r.rule.id for r in mounted.rules] == [r.rule.id for r in shipped.rules]
    rendered = ReplyRenderer(templates).render("objection", "ar", mounted.settings, datetime.now(UTC), "r")
    assert "Widerspruch" in rendered.text and 'dir="rtl"' in rendered.html
    # the dashboard's own loader (services/web/dashboard.py) over templates/dashboard
    pages = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates / "dashboard")), autoescape=True)
    for name in sorted(path.name for path in (PROJECT_ROOT / "templates" / "dashboard").glob("*.j2")):
        pages.get_template(name)


def test_kustomize_gives_every_deployment_the_items() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    built = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=True).stdout
    deployments = [d for d in yaml.safe_load_all(built) if d and d["kind"] == "Deployment"]
    assert len(deployments) == 3
    expected = _volumes()
    for deployment in deployments:
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert "emptyDir" in volumes["var"]
        for name, configmap in expected.items():
            assert volumes[name]["configMap"] == configmap, (deployment["metadata"]["name"], name)
