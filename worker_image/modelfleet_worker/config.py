"""Worker settings: one table drives the CLI flags, the env vars and `--help`.

The operator passes settings as MODELFLEET_WORKER_* env vars; a flag given on
the command line wins over its env var.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from modelfleet_common.textscore import DEFAULT_MIN_WORD_ACCURACY

from .ocr import DEFAULT_ENGINE, ENGINES

ENV_PREFIX = "MODELFLEET_WORKER_"

FAMILIES = ("sd15", "sdxl", "sd3", "flux", "custom")
DTYPES = ("float16", "bfloat16", "float32")
DEVICES = ("auto", "cpu", "cuda")


def parse_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {value!r} (use true/false)")


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in options:
            raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(options)}")
        return value

    return parse


def _non_negative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _rate(value: str) -> float:
    r = float(value)
    if not 0.0 <= r <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {r}")
    return r


def _price(value: str) -> float:
    p = float(value)
    if not (p >= 0.0 and p < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return p


def default_cache_dir() -> str:
    # /var/cache/modelfleet exists (writable) in the image; elsewhere use tmp.
    path = "/var/cache/modelfleet"
    if os.path.isdir(path) and os.access(path, os.W_OK):
        return path
    return os.path.join(tempfile.gettempdir(), "modelfleet-cache")


@dataclass(frozen=True)
class Setting:
    name: str  # dataclass field; flag is --name-with-dashes, env is PREFIX + NAME
    parse: Callable[[str], Any]
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("model", str, "", "model URI: file:///path, a plain path, hf://org/name, s3://b/p"),
    Setting("host", str, "0.0.0.0", "address to listen on"),
    Setting("port", int, 8080, "port to listen on"),
    Setting("max_batch_size", _positive_int, 4, "most images in one batch"),
    Setting("max_latency_ms", _non_negative_int, 80, "longest a request waits to be batched"),
    Setting("memory_aware", parse_bool, True, "bound batch size by free GPU memory"),
    Setting("max_resolution", _positive_int, 1024, "largest width or height accepted"),
    Setting("max_steps", _positive_int, 50, "most inference steps accepted"),
    Setting("dtype", _choice(DTYPES), "float16", "weights dtype (CPU always uses float32)"),
    Setting("family", _choice(FAMILIES), "custom", "model family: " + "|".join(FAMILIES)),
    Setting("turbo", parse_bool, False, "few-step distilled model: turbo steps, guidance 0"),
    Setting("vae", str, "", "optional URI of a replacement VAE"),
    Setting("revision", str, "", "model revision (hf:// only)"),
    Setting("cache_dir", str, None, "where fetched models live (default /var/cache/modelfleet)"),
    Setting("pool", str, "default", "ModelPool name, exported as a metric label"),
    Setting("device", _choice(DEVICES), "auto", "auto|cpu|cuda"),
    Setting("max_queue", _positive_int, 64, "most queued images before answering 429"),
    Setting("compile", parse_bool, False, "torch.compile the denoiser (slow start, faster steps)"),
    Setting("channels_last", parse_bool, False, "use channels_last memory format for conv nets"),
    Setting("cpu_threads", _non_negative_int, 0, "torch CPU threads (0 = torch default)"),
    Setting(
        "truncate",
        parse_bool,
        True,
        "cut prompts longer than a text encoder takes (header + metric); false: answer 400",
    ),
    Setting(
        "model_cpu_offload",
        parse_bool,
        False,
        "keep idle submodels in CPU memory, one on the GPU at a time (slower; CUDA only)",
    ),
    Setting("vae_tiling", parse_bool, False, "decode large images in VAE tiles (less memory)"),
    Setting("vae_slicing", parse_bool, False, "decode a batch one image at a time in the VAE"),
    Setting(
        "service_clock",
        _choice(("wall", "cpu")),
        "wall",
        "X-ModelFleet-Service-Time clock: wall, or the inference thread's CPU time (cpu: for "
        "workers that share CPU cores, with cpu_threads 1)",
    ),
    Setting(
        "gpu_hour_price",
        _price,
        0.0,
        "USD per GPU-hour; a response's cost = its images' service seconds x GPUS x this / 3600",
    ),
    Setting("gpus", _non_negative_int, 1, "GPUs the pod holds (spec.gpu.count), for cost only"),
    Setting(
        "max_upload_bytes",
        _positive_int,
        25 * 1024 * 1024,
        "largest multipart body POST /v1/images/edits reads (413 naming the field beyond it)",
    ),
    Setting("drain_timeout_s", float, 300.0, "longest SIGTERM waits for queued work"),
    Setting("memory_margin_fraction", float, 0.10, "GPU memory kept free as a safety margin"),
    Setting("warmup", parse_bool, True, "run a warm-up generation before ready"),
    Setting("fault_latency_ms", _non_negative_int, 0, "drill: added latency per request"),
    Setting("fault_error_rate", _rate, 0.0, "drill: fraction of requests answered 500"),
    Setting("fault_oom_above_batch", _non_negative_int, 0, "drill: OOM on batches above k (0=off)"),
    Setting("fault_seed", int, 0, "seed for the injected-error coin (0 = random)"),
    Setting("verify", parse_bool, True, "OCR-verify the text each render was asked for"),
    Setting("verify_engine", _choice(ENGINES), DEFAULT_ENGINE, "OCR engine: " + "|".join(ENGINES)),
    Setting("verify_workers", _positive_int, 1, "OCR threads (each takes one CPU core)"),
    Setting(
        "verify_min_word_accuracy",
        _rate,
        DEFAULT_MIN_WORD_ACCURACY,
        "word accuracy a render needs to pass verification",
    ),
)


@dataclass(frozen=True)
class WorkerConfig:
    model: str = ""
    host: str = "0.0.0.0"
    port: int = 8080
    max_batch_size: int = 4
    max_latency_ms: int = 80
    memory_aware: bool = True
    max_resolution: int = 1024
    max_steps: int = 50
    dtype: str = "float16"
    family: str = "custom"
    turbo: bool = False
    vae: str = ""
    revision: str = ""
    cache_dir: str = ""
    pool: str = "default"
    device: str = "auto"
    max_queue: int = 64
    compile: bool = False
    channels_last: bool = False
    cpu_threads: int = 0
    truncate: bool = True
    model_cpu_offload: bool = False
    vae_tiling: bool = False
    vae_slicing: bool = False
    service_clock: str = "wall"
    gpu_hour_price: float = 0.0
    gpus: int = 1
    max_upload_bytes: int = 25 * 1024 * 1024
    drain_timeout_s: float = 300.0
    memory_margin_fraction: float = 0.10
    warmup: bool = True
    fault_latency_ms: int = 0
    fault_error_rate: float = 0.0
    fault_oom_above_batch: int = 0
    fault_seed: int = 0
    verify: bool = True
    verify_engine: str = "rapidocr"
    verify_workers: int = 1
    verify_min_word_accuracy: float = DEFAULT_MIN_WORD_ACCURACY


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    for s in SETTINGS:
        shown = "auto" if s.default is None else s.default
        parser.add_argument(
            s.flag,
            dest=s.name,
            type=s.parse,
            default=None,  # None = "not given": the env var or the default applies
            help=f"{s.help} [env {s.env}, default {shown}]",
        )


def resolve_config(args: argparse.Namespace, env: Mapping[str, str]) -> WorkerConfig:
    """Flag wins over env, env over default. Raises ValueError naming the env var."""
    values: dict[str, Any] = {}
    for s in SETTINGS:
        given = getattr(args, s.name, None)
        if given is not None:
            values[s.name] = given
        elif s.env in env:
            try:
                values[s.name] = s.parse(env[s.env])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise ValueError(f"{s.env}={env[s.env]!r}: {exc}") from exc
        else:
            values[s.name] = s.default
    if values["cache_dir"] is None:
        values["cache_dir"] = default_cache_dir()
    names = {f.name for f in fields(WorkerConfig)}
    assert names == {s.name for s in SETTINGS}, "SETTINGS and WorkerConfig drifted"
    return WorkerConfig(**values)
