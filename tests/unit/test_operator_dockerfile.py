"""The operator/router Containerfile's structure, checked without building it (the
built image is proven in tests/integration/process/test_images_router.py and
tests/integration/cluster/test_images_operator.py)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "operator" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    out = []
    for line in re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_runs_as_numeric_non_root_user() -> None:
    users = [rest for word, rest in _instructions() if word == "USER"]
    assert users, "no USER instruction"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]


def test_copied_paths_exist() -> None:
    for word, rest in _instructions():
        if word == "COPY" and "--from=" not in rest:  # --from copies from a build stage
            *sources, _dest = rest.split()
            for src in sources:
                assert (REPO / src).exists(), f"COPY {src}: missing in the build context"


def test_command_is_a_declared_console_script_and_no_torch() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    cmd = next(rest for word, rest in _instructions() if word == "CMD")
    assert re.findall(r'"([^"]+)"', cmd)[0] in scripts
    install = " ".join(rest for word, rest in _instructions() if word == "RUN")
    assert re.search(r"pip install (--[\w-]+ )*\.( |$)", install) and "[worker]" not in install, (
        "the control-plane image must not pull torch"
    )


def test_chart_uses_the_same_entrypoints() -> None:
    chart = REPO / "charts" / "modelfleet" / "templates"
    assert 'command: ["modelfleet", "operator"]' in (chart / "operator.yaml").read_text()
    assert 'command: ["modelfleet", "router"]' in (chart / "router.yaml").read_text()


def test_dev_and_test_code_stays_out_of_the_images() -> None:
    """The images install the root project; devtools/ is a distribution of its own."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    find = project["tool"]["setuptools"]["packages"]["find"]
    assert "devtools" not in find["where"]
    assert not any(p.startswith("modelfleet_dev") for p in find["include"])
    assert all(pattern != "modelfleet*" for pattern in find["include"]), (
        "modelfleet* would also match modelfleet_dev"
    )
    for dockerfile in (DOCKERFILE, REPO / "worker_image" / "Dockerfile"):
        copied = [
            line.split()[1]
            for line in dockerfile.read_text().splitlines()
            if line.strip().upper().startswith("COPY ")
        ]
        assert "devtools" not in copied, f"{dockerfile.name} copies devtools/"
        # The error envelope and other wire formats both images speak.
        assert "common" in copied, f"{dockerfile.name} lacks common/ (modelfleet_common)"


def test_test_modules_have_unique_basenames() -> None:
    """pytest imports test modules by basename (no __init__.py): a duplicate stops collection."""
    names = [p.name for p in (REPO / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
