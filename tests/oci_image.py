"""Run an image from its OCI archive the way a kubelet would: the root filesystem
unpacked by umoci, the image's own user, environment and entrypoint, a read-only
root with a writable /tmp and no capabilities (the chart's restricted security
context), under crun. The host network is shared so tests reach it on loopback."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "dist" / "images"
TOOLS = ("crun", "umoci")
# crun refuses a cgroup v1/v2 hybrid host; hiding the v2 mount in a mount namespace
# of its own leaves it a plain v1 host (the host's mounts are untouched).
_HIDE_HYBRID = 'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun "$@"'


def _crun(*args: str) -> list[str]:
    return ["unshare", "--mount", "sh", "-c", _HIDE_HYBRID, "crun", *args]


def version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def archive(name: str) -> Path:
    """dist/images/<name>-<version>.oci.tar, as `make images` writes it."""
    path = IMAGES / f"{name}-{version()}.oci.tar"
    if not path.is_file():
        target = "image-modelfleet" if name == "modelfleet" else "images"
        raise FileNotFoundError(f"{path} is missing: build it with `make {target}`")
    return path


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


@dataclass(frozen=True)
class ImageConfig:
    """What the image's OCI config says about how it runs."""

    user: str
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    workdir: str
    labels: dict[str, str]
    exposed_ports: list[str]
    layers: int


def _blob(layout: Path, digest: str) -> Any:
    algo, _, hexdigest = digest.partition(":")
    return json.loads((layout / "blobs" / algo / hexdigest).read_text())


def read_config(layout: Path, tag: str) -> ImageConfig:
    index = json.loads((layout / "index.json").read_text())
    refs = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    assert len(refs) == 1, f"tag {tag} in {layout}/index.json: {index['manifests']}"
    manifest = _blob(layout, refs[0]["digest"])
    config = _blob(layout, manifest["config"]["digest"])["config"]
    return ImageConfig(
        user=config.get("User", ""),
        env=dict(e.split("=", 1) for e in config.get("Env", [])),
        entrypoint=config.get("Entrypoint") or [],
        cmd=config.get("Cmd") or [],
        workdir=config.get("WorkingDir", ""),
        labels=config.get("Labels") or {},
        exposed_ports=sorted(config.get("ExposedPorts") or {}),
        layers=len(manifest["layers"]),
    )


@dataclass
class Unpacked:
    """An image archive unpacked into an OCI layout and a runtime bundle."""

    layout: Path
    bundle: Path
    config: ImageConfig

    @property
    def rootfs(self) -> Path:
        return self.bundle / "rootfs"


def unpack(archive_path: Path, work: Path) -> Unpacked:
    layout, bundle = work / "layout", work / "bundle"
    layout.mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(archive_path), "-C", str(layout)], check=True)
    tag = version()
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)],
        check=True,
        capture_output=True,
    )
    # umoci's runtime spec for the image (user, env, cwd, entrypoint); each run adapts a copy.
    (bundle / "config.json").rename(bundle / "image-spec.json")
    return Unpacked(layout, bundle, read_config(layout, tag))


def timestamp_pycs(rootfs: Path) -> tuple[int, list[str]]:
    """(how many .pyc files, those that are timestamp-based). A timestamp .pyc is
    valid only while its source keeps the mtime it recorded; an image build that sets
    every file's time makes it stale, and Python then recompiles the module at every
    start. Hash-based ones (PEP 552, flags bit 0) carry no time."""
    total, stale = 0, []
    for pyc in rootfs.rglob("*.pyc"):
        if not pyc.is_file() or pyc.is_symlink():
            continue
        total += 1
        with pyc.open("rb") as f:
            header = f.read(8)
        if not int.from_bytes(header[4:8], "little") & 1:
            stale.append(str(pyc.relative_to(rootfs)))
    return total, stale


@dataclass(frozen=True)
class Archive:
    """An OCI archive's one image, read in place: manifest, config and blobs."""

    path: Path
    manifest: dict[str, Any]
    config: dict[str, Any]

    @classmethod
    def open(cls, path: Path) -> Archive:
        with tarfile.open(path) as tar:
            index = json.loads(_member(tar, "index.json"))
            (ref,) = index["manifests"]
            manifest = json.loads(_member(tar, _blob_name(ref["digest"])))
            config = json.loads(_member(tar, _blob_name(manifest["config"]["digest"])))
        return cls(path, manifest, config)

    @property
    def layers(self) -> list[str]:
        return [layer["digest"] for layer in self.manifest["layers"]]

    def blob(self, digest: str) -> bytes:
        with tarfile.open(self.path) as tar:
            return _member(tar, _blob_name(digest))


def _blob_name(digest: str) -> str:
    algo, _, hexdigest = digest.partition(":")
    return f"blobs/{algo}/{hexdigest}"


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    f = tar.extractfile(name)
    assert f is not None, f"{name} is not a file in {tar.name!r}"
    return f.read()


def layer_entries(layer: bytes) -> dict[str, tuple[str, int, int, int, int]]:
    """Each entry of a layer tarball: (content digest or link target, mtime, mode, uid, gid)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:*") as tar:
        for entry in tar:
            f = tar.extractfile(entry) if entry.isfile() else None
            what = hashlib.sha256(f.read()).hexdigest() if f else entry.linkname
            out[entry.name] = (what, int(entry.mtime), entry.mode, entry.uid, entry.gid)
    return out


def layer_differences(a: bytes, b: bytes) -> list[str]:
    """Entries two layers disagree on (missing in one, other content or metadata)."""
    x, y = layer_entries(a), layer_entries(b)
    return [name for name in sorted(x.keys() | y.keys()) if x.get(name) != y.get(name)]


@dataclass(frozen=True)
class Mount:
    source: Path
    destination: str
    writable: bool = False


@dataclass
class Container:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    pid_file: Path
    _stopped: bool = field(default=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running(self) -> bool:
        return self.proc.poll() is None

    def uid_gid(self) -> tuple[int, int]:
        """Real UID and GID of the container's first process, read from /proc."""
        pid = int(self.pid_file.read_text())
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        uid = next(line for line in status if line.startswith("Uid:")).split()[1]
        gid = next(line for line in status if line.startswith("Gid:")).split()[1]
        return int(uid), int(gid)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (crun passes it to the container's process), as a kubelet stops a pod."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._stopped:
            subprocess.run(_crun("delete", "--force", self.name), capture_output=True)
            self._stopped = True
        return self.proc.returncode


def run(
    image: Unpacked,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    mounts: tuple[Mount, ...] = (),
    log_path: Path | None = None,
) -> Container:
    """Start the image's entrypoint (or `args` in its place) as the image's user."""
    spec = json.loads((image.bundle / "image-spec.json").read_text())
    process = spec["process"]
    process["terminal"] = False
    if args is not None:
        process["args"] = args
    merged = dict(e.split("=", 1) for e in process["env"])
    merged.update(env or {})
    process["env"] = [f"{k}={v}" for k, v in merged.items()]
    process["capabilities"] = {k: [] for k in process.get("capabilities", {})}
    process["noNewPrivileges"] = True
    spec["root"]["readonly"] = True
    linux = spec["linux"]
    linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "network"]
    spec["hostname"] = "image-test"
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/tmp"]
    spec["mounts"].append(
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", "size=1g"],
        }
    )
    for m in mounts:
        spec["mounts"].append(
            {
                "destination": m.destination,
                "type": "bind",
                "source": str(m.source),
                "options": ["rbind", "rw" if m.writable else "ro"],
            }
        )
    name = f"mf-image-test-{uuid.uuid4().hex[:8]}"
    config = image.bundle.parent / f"{name}.json"
    config.write_text(json.dumps(spec))
    log_path = log_path or image.bundle.parent / f"{name}.log"
    pid_file = image.bundle.parent / f"{name}.pid"
    cmd = _crun("run", "--bundle", str(image.bundle), "--config", str(config))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*cmd, "--pid-file", str(pid_file), name],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return Container(name, proc, log_path, pid_file)


class Forwarder:
    """A TCP relay from `listen` to `upstream`: what a Service's virtual IP does for a
    pod (kubernetes.default.svc:443 in front of the API server)."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.server = socket.create_server(listen)
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Forwarder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
