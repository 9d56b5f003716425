"""Free/total GPU memory from NVML (nvidia-ml-py), falling back to CUDA's view."""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch

log = logging.getLogger("modelfleet_worker.gpu")
_lock = threading.Lock()
_handles: dict[int, Any] = {}
_nvml_failed = False


def _handle(index: int) -> Any:
    global _nvml_failed
    with _lock:
        if _nvml_failed:
            return None
        if index in _handles:
            return _handles[index]
        try:
            import pynvml

            pynvml.nvmlInit()
            props: Any = torch.cuda.get_device_properties(index)
            # NVML enumerates every GPU and ignores CUDA_VISIBLE_DEVICES: match by PCI id.
            bus = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
            h = pynvml.nvmlDeviceGetHandleByPciBusId(bus)
        except Exception as exc:  # NVML missing or too old: use cudaMemGetInfo
            log.warning("NVML unavailable (%s); using torch.cuda.mem_get_info", exc)
            _nvml_failed = True
            return None
        _handles[index] = h
        return h


def device_memory(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes on the device, as the driver sees it."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    h = _handle(index)
    if h is not None:
        import pynvml

        info = pynvml.nvmlDeviceGetMemoryInfo(h)
        return int(info.free), int(info.total)
    free, total = torch.cuda.mem_get_info(index)
    return int(free), int(total)
