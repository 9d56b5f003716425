"""One source of truth for each image, checked without building it: the Docker path
(the Containerfile FROM debian:bookworm-slim, the release workflow) and the
daemonless path (`make images`: buildah, the same Containerfile FROM a base that
mmdebstrap makes) must agree, and the chart's defaults must name exactly what the
release publishes, at the one version pyproject.toml declares."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
VERSION = PROJECT["version"]
CONTAINERFILES = {"modelfleet": "operator/Dockerfile", "worker": "worker_image/Dockerfile"}
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
CHART = REPO / "charts" / "modelfleet"


def instructions(path: str) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (REPO / path).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def shell_assignments(path: str) -> dict[str, str]:
    found = re.findall(r"^([A-Z_]+)=(\S+)$", (REPO / path).read_text(), re.MULTILINE)
    return dict(found)


def workflow() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return data


@pytest.mark.parametrize("name", sorted(CONTAINERFILES))
def test_containerfile_builds_from_the_debian_base_both_paths_share(name: str) -> None:
    ins = instructions(CONTAINERFILES[name])
    args = dict(rest.split("=", 1) for word, rest in ins if word == "ARG" and "=" in rest)
    froms = [rest.split()[0] for word, rest in ins if word == "FROM"]
    assert froms and all(f == "${BASE_IMAGE}" for f in froms), froms
    # The Docker default and the local recipe: the same Debian suite, slim.
    local = shell_assignments("scripts/image-base.sh")
    assert args["BASE_IMAGE"] == f"docker.io/library/debian:{local['SUITE']}-slim"
    recipe = (REPO / "scripts" / "image-base.sh").read_text()
    assert "--variant=minbase" in recipe
    for excluded in ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*"):
        assert f"path-exclude={excluded}" in recipe, excluded
    # The version is passed in, never defaulted: a label cannot silently lie.
    assert "VERSION" in [rest for word, rest in ins if word == "ARG"]
    assert any("grep -qx" in rest and "pyproject.toml" in rest for w, rest in ins if w == "RUN")


def test_local_build_and_release_build_the_same_containerfiles() -> None:
    script = (REPO / "scripts" / "images.sh").read_text()
    local = dict(re.findall(r"^\s+(\w+)\) file=(\S+) ;;$", script, re.MULTILINE))
    assert local == CONTAINERFILES
    matrix = workflow()["jobs"]["images"]["strategy"]["matrix"]["include"]
    assert {m["image"]: m["file"] for m in matrix} == CONTAINERFILES
    platforms = {m["image"]: m["platforms"].split(",") for m in matrix}
    assert platforms == {"modelfleet": ["linux/amd64", "linux/arm64"], "worker": ["linux/amd64"]}
    # Both paths pass the same build arguments; the local one adds only its base.
    step = next(
        s
        for s in workflow()["jobs"]["images"]["steps"]
        if s.get("uses", "").startswith("docker/build-push-action")
    )
    released = {line.split("=")[0] for line in step["with"]["build-args"].splitlines()}
    built = set(re.findall(r"--build-arg (\w+)=", script))
    assert built - {"BASE_IMAGE", "SOURCE_DATE_EPOCH"} == released == {"VERSION", "REVISION"}
    # SOURCE_DATE_EPOCH, the commit's time, in both: a build argument here, the
    # environment there (buildx passes it on as the build argument).
    assert "epoch=$(git log -1 --format=%ct" in script
    commit_time = 'echo "SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)" >> "$GITHUB_ENV"'
    steps = workflow()["jobs"]["images"]["steps"]
    assert [s.get("run") for s in steps].index(commit_time) < steps.index(step)
    for file in CONTAINERFILES.values():
        assert "ARG SOURCE_DATE_EPOCH" in [f"{w} {rest}" for w, rest in instructions(file)]


@pytest.mark.parametrize("name", sorted(CONTAINERFILES))
def test_labels_carry_version_source_and_licence(name: str) -> None:
    labels = " ".join(rest for word, rest in instructions(CONTAINERFILES[name]) if word == "LABEL")
    pairs = dict(re.findall(r'(org\.opencontainers\.image\.\w+)="([^"]*)"', labels))
    assert pairs["org.opencontainers.image.version"] == "${VERSION}"
    assert pairs["org.opencontainers.image.licenses"] == PROJECT["license"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert pairs["org.opencontainers.image.source"] == chart["home"]


@pytest.mark.parametrize("name", sorted(CONTAINERFILES))
def test_runs_as_the_chart_user(name: str) -> None:
    users = [rest for word, rest in instructions(CONTAINERFILES[name]) if word == "USER"]
    assert users[-1] == "10001:10001"
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert "runAsUser: 10001" in helpers and "runAsGroup: 10001" in helpers


def test_one_version_for_chart_and_images() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == VERSION
    check = workflow()["jobs"]["version"]["steps"][1]["run"]
    assert "pyproject.toml" in check and "Chart.yaml" in check and "GITHUB_REF_NAME" in check
    # Every published tag is that version.
    step = next(
        s
        for s in workflow()["jobs"]["images"]["steps"]
        if s.get("uses", "").startswith("docker/build-push-action")
    )
    assert step["with"]["tags"].endswith(":${{ needs.version.outputs.version }}")


def test_chart_defaults_name_exactly_the_published_images() -> None:
    env = workflow()["env"]
    published = {f"{env['IMAGE_PREFIX']}/{name}" for name in CONTAINERFILES}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert {values["image"]["repository"], values["workerImage"]["repository"]} == published
    # Empty tags mean appVersion, which is the version the workflow tags with.
    assert values["image"]["tag"] == "" and values["workerImage"]["tag"] == ""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert helpers.count("| default .Chart.AppVersion") == 2
    # The operator's own default (pools without spec.image, no chart) agrees too.
    from modelfleet.builders.modelpool import BuildSettings
    from modelfleet.controllers.cli import DEFAULT_IMAGE

    worker = f"{env['IMAGE_PREFIX']}/worker:{VERSION}"
    assert BuildSettings().default_image == DEFAULT_IMAGE == worker


def test_release_publishes_chart_and_crds() -> None:
    jobs = workflow()["jobs"]
    chart = jobs["chart"]["steps"][-1]["run"]
    assert 'helm package charts/modelfleet --version "$VERSION" --app-version "$VERSION"' in chart
    assert 'helm push "dist/modelfleet-$VERSION.tgz" "$CHART_REPOSITORY"' in chart
    assert workflow()["env"]["CHART_REPOSITORY"] == "oci://ghcr.io/modelfleet/charts"
    notes = "\n".join(s.get("run", "") for s in jobs["github-release"]["steps"])
    assert "crds/*.yaml" in notes and "modelfleet-crds-$VERSION.yaml" in notes
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert f"## [{VERSION}]" in changelog, "CHANGELOG.md needs a section for the version"


def test_cli_works_without_the_dev_tools() -> None:
    """Images carry modelfleet but never modelfleet_dev: the CLI must not need it."""
    code = (
        "import sys; sys.modules['modelfleet_dev'] = None\n"
        "from modelfleet.cli import build_parser\n"
        "p = build_parser()\n"
        "cmds = p._subparsers._group_actions[0].choices\n"
        "assert 'dev' not in cmds and {'operator', 'router', 'crds'} <= set(cmds), cmds\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_build_context_leaves_out_dev_code_and_local_state() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "everything is excluded unless named"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "operator", "worker_image", "common"}
