"""Build the local control-plane binaries from their Go modules and cache them.

Binaries live outside the repository, keyed by component and version, so a
pin change triggers exactly one rebuild and nothing is ever committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

KUBERNETES_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.5"  # the etcd client version k8s.io/kubernetes pins
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"
# Checkers `make test` runs on the chart, the generated worker manifests and the
# release workflow; built and cached like the cluster binaries.
ACTIONLINT_VERSION = "v1.7.12"
KUBE_SCORE_VERSION = "v1.20.0"
# The S3 server the s3:// fetch tests run against: gofakes3 (MIT) behind a SigV4
# check, from devtools/modelfleet_dev/s3server/main.go (keyed by that file's hash).
GOFAKES3_VERSION = "v1.2.0"
S3SERVER_MAIN = Path(__file__).with_name("s3server") / "main.go"

# k8s.io/kubernetes resolves these to ./staging in its own go.mod; as a
# dependency they must point at the published module of the matching version.
STAGING_MODULES = [
    "api",
    "apiextensions-apiserver",
    "apimachinery",
    "apiserver",
    "cli-runtime",
    "client-go",
    "cloud-provider",
    "cluster-bootstrap",
    "code-generator",
    "component-base",
    "component-helpers",
    "controller-manager",
    "cri-api",
    "cri-client",
    "csi-translation-lib",
    "dynamic-resource-allocation",
    "endpointslice",
    "externaljwt",
    "kms",
    "kube-aggregator",
    "kube-controller-manager",
    "kube-proxy",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "metrics",
    "mount-utils",
    "pod-security-admission",
    "sample-apiserver",
    "sample-cli-plugin",
    "sample-controller",
]

KUBERNETES_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


class BuildError(RuntimeError):
    """A binary could not be built; the message carries the tail of the build log."""


def cache_root() -> Path:
    env = os.environ.get("MODELFLEET_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "modelfleet"


@dataclass(frozen=True)
class Component:
    name: str
    version: str
    binaries: tuple[str, ...]
    go_mod: str | None = None  # wrapper module text, when `go install` cannot be used
    main_go: Path | None = None  # the wrapper module's main.go (default: an empty main)
    packages: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = field(default_factory=tuple)
    # go build names a binary after its package's last path element
    renames: tuple[tuple[str, str], ...] = ()
    # More ldflags read from the downloaded module's go.mod (Helm derives its
    # default Kubernetes version from its client-go requirement).
    ldflags_from_go_mod: Callable[[str], tuple[str, ...]] | None = None
    # Bumped when the build recipe changes, so a cached binary built the old way is rebuilt.
    recipe: int = 1

    @property
    def directory(self) -> Path:
        suffix = f"-r{self.recipe}" if self.recipe > 1 else ""
        return cache_root() / "bin" / f"{self.name}-{self.version}{suffix}"

    def is_built(self) -> bool:
        return all((self.directory / b).is_file() for b in self.binaries)


def _kubernetes_component() -> Component:
    minor = KUBERNETES_VERSION.lstrip("v").split(".")
    staging_version = f"v0.{minor[1]}.{minor[2]}"
    replaces = "\n".join(f"\tk8s.io/{m} => k8s.io/{m} {staging_version}" for m in STAGING_MODULES)
    go_mod = (
        "module modelfleet.local/k8sbuild\n\ngo 1.25.0\n\n"
        f"require k8s.io/kubernetes {KUBERNETES_VERSION}\n\n"
        f"replace (\n{replaces}\n)\n"
    )
    version_pkg = "k8s.io/component-base/version"
    ldflags = (
        f"-X {version_pkg}.gitVersion={KUBERNETES_VERSION}",
        f"-X {version_pkg}.gitMajor={minor[0]}",
        f"-X {version_pkg}.gitMinor={minor[1]}",
        f"-X {version_pkg}.gitTreeState=clean",
        f"-X {version_pkg}.buildDate=1970-01-01T00:00:00Z",
    )
    return Component(
        name="kubernetes",
        version=KUBERNETES_VERSION,
        binaries=KUBERNETES_BINARIES,
        go_mod=go_mod,
        packages=tuple(f"k8s.io/kubernetes/cmd/{b}" for b in KUBERNETES_BINARIES),
        ldflags=ldflags,
    )


def _etcd_component() -> Component:
    # etcd's server module replaces its siblings with relative paths, so it
    # cannot be `go install`ed; a wrapper module pins the siblings instead.
    go_mod = (
        "module modelfleet.local/etcdbuild\n\ngo 1.24\n\n"
        f"require (\n\tgo.etcd.io/etcd/server/v3 {ETCD_VERSION}\n"
        f"\tgo.etcd.io/etcd/api/v3 {ETCD_VERSION}\n"
        f"\tgo.etcd.io/etcd/client/pkg/v3 {ETCD_VERSION}\n"
        f"\tgo.etcd.io/etcd/client/v3 {ETCD_VERSION}\n"
        f"\tgo.etcd.io/etcd/pkg/v3 {ETCD_VERSION}\n)\n"
    )
    return Component(
        name="etcd",
        version=ETCD_VERSION,
        binaries=("etcd",),
        go_mod=go_mod,
        packages=("go.etcd.io/etcd/server/v3",),
        renames=(("server", "etcd"),),
    )


def _s3server_component() -> Component:
    digest = hashlib.sha256(S3SERVER_MAIN.read_bytes()).hexdigest()[:10]
    go_mod = (
        "module modelfleet.local/modelfleet-s3\n\ngo 1.24\n\n"
        f"require github.com/johannesboyne/gofakes3 {GOFAKES3_VERSION}\n"
    )
    return Component(
        name="modelfleet-s3",
        version=f"{GOFAKES3_VERSION}-{digest}",
        binaries=("modelfleet-s3",),
        go_mod=go_mod,
        main_go=S3SERVER_MAIN,
        packages=(".",),
    )


def helm_kube_version_ldflags(go_mod: str) -> tuple[str, ...]:
    """What Helm's Makefile sets: the default Kubernetes version (used by `helm
    template` without a cluster and by `helm lint`) is its client-go v0.N as 1.N.

    Without these, Helm's source default of v1.20 makes `helm template` refuse any
    chart whose kubeVersion asks for a newer cluster.
    """
    found = re.search(r"^\s*k8s\.io/client-go\s+v(\d+)\.(\d+)\.", go_mod, re.MULTILINE)
    if found is None:
        raise BuildError("helm's go.mod does not require k8s.io/client-go")
    major, minor = str(int(found.group(1)) + 1), found.group(2)
    return tuple(
        f"-X helm.sh/helm/v3/pkg/{pkg}.k8sVersion{part}={value}"
        for pkg in ("lint/rules", "chartutil")
        for part, value in (("Major", major), ("Minor", minor))
    )


def components() -> list[Component]:
    return [
        _etcd_component(),
        _kubernetes_component(),
        Component(
            name="kwok",
            version=KWOK_VERSION,
            binaries=("kwok",),
            packages=(f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}",),
            ldflags=(f"-X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION}",),
        ),
        Component(
            name="helm",
            version=HELM_VERSION,
            binaries=("helm",),
            packages=(f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}",),
            ldflags=(f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",),
            ldflags_from_go_mod=helm_kube_version_ldflags,
            recipe=2,  # 2: the default Kubernetes version from client-go, as Helm's release
        ),
        Component(
            name="actionlint",
            version=ACTIONLINT_VERSION,
            binaries=("actionlint",),
            packages=(f"github.com/rhysd/actionlint/cmd/actionlint@{ACTIONLINT_VERSION}",),
            ldflags=(f"-X github.com/rhysd/actionlint.version={ACTIONLINT_VERSION}",),
        ),
        Component(
            name="kube-score",
            version=KUBE_SCORE_VERSION,
            binaries=("kube-score",),
            packages=(f"github.com/zegl/kube-score/cmd/kube-score@{KUBE_SCORE_VERSION}",),
            ldflags=(f"-X main.version={KUBE_SCORE_VERSION}",),
        ),
        _s3server_component(),
    ]


def binary_path(name: str) -> Path:
    for component in components():
        if name in component.binaries:
            return component.directory / name
    raise KeyError(name)


def bin_dirs() -> list[Path]:
    return [c.directory for c in components()]


def missing_prerequisites() -> list[str]:
    return [] if shutil.which("go") else ["Go toolchain (`go` not on PATH; install Go 1.25+)"]


def _log(msg: str) -> None:
    print(f"[modelfleet build] {msg}", file=sys.stderr, flush=True)


def _run_logged(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, label: str) -> None:
    start = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        # Progress lines keep a long cold build from looking hung in CI.
        while True:
            try:
                rc = proc.wait(timeout=60)
                break
            except subprocess.TimeoutExpired:
                _log(f"{label}: still building ({time.monotonic() - start:.0f}s)")
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise BuildError(f"building {label} failed (exit {rc}); last lines of {log}:\n{tail}")


def _module_go_mod(component: Component, work: Path, env: dict[str, str]) -> str:
    """The go.mod of the module a `pkg@version` install builds, downloaded first."""
    package, _, version = component.packages[0].partition("@")
    module = package.split("/cmd/")[0]
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    info = json.loads(proc.stdout or "{}")
    if proc.returncode != 0 or "GoMod" not in info:
        raise BuildError(
            f"downloading {module}@{version} failed: {info.get('Error') or proc.stderr}"
        )
    return Path(info["GoMod"]).read_text()


def build(component: Component, force: bool = False) -> float:
    """Build one component unless cached; returns seconds spent (0 when cached)."""
    if component.is_built() and not force:
        return 0.0
    missing = missing_prerequisites()
    if missing:
        raise BuildError("cannot build binaries: missing " + ", ".join(missing))
    start = time.monotonic()
    work = cache_root() / "build" / f"{component.name}-{component.version}"
    work.mkdir(parents=True, exist_ok=True)
    staging = component.directory.with_name(component.directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    log = work / "build.log"
    log.write_text("")
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-trimpath -buildvcs=false")
    extra: tuple[str, ...] = ()
    if component.ldflags_from_go_mod is not None:
        extra = component.ldflags_from_go_mod(_module_go_mod(component, work, env))
    ldflags = " ".join(("-s", "-w", *component.ldflags, *extra))
    _log(f"building {component.name} {component.version} (log: {log})")
    if component.go_mod is not None:
        (work / "go.mod").write_text(component.go_mod)
        main = "package main\n\nfunc main() {}\n"
        (work / "main.go").write_text(
            main if component.main_go is None else component.main_go.read_text()
        )
        _run_logged(["go", "mod", "download"], work, env, log, f"{component.name} (download)")
        cmd = ["go", "build", "-mod=mod", "-ldflags", ldflags, "-o", str(staging) + "/"]
        _run_logged([*cmd, *component.packages], work, env, log, component.name)
        for built, wanted in component.renames:
            (staging / built).rename(staging / wanted)
    else:
        env["GOBIN"] = str(staging)
        cmd = ["go", "install", "-ldflags", ldflags, *component.packages]
        _run_logged(cmd, work, env, log, component.name)
    shutil.rmtree(component.directory, ignore_errors=True)
    staging.rename(component.directory)
    spent = time.monotonic() - start
    _log(f"built {component.name} {component.version} in {spent:.0f}s")
    return spent


def ensure_all(force: bool = False) -> dict[str, float]:
    return {c.name: build(c, force=force) for c in components()}


if __name__ == "__main__":
    spent = ensure_all()
    _log("all binaries ready: " + ", ".join(f"{k} {v:.0f}s" for k, v in spent.items()))
