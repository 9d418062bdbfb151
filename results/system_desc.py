"""The MLPerf system description (`<submitter>/systems/<system>.json`).

`system_description` returns every field mlperf-logging's `system_desc_checker` requires, as
strings (the checker joins some of them with ",".join and crashes on numbers); fields podium
cannot know are empty strings, which the checker accepts. `describe_host` reads what the
current machine can say about itself (no hostname: these files get published).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import psutil

from results.layout import atomic_write_text

__all__ = ["REQUIRED_FIELDS", "STATUS", "describe_host", "system_description",
           "write_system_description"]

# mlperf-logging 4.1.68 system_desc_checker's required fields, in its order.
REQUIRED_FIELDS = (
    "submitter", "division", "status", "system_name",
    "number_of_nodes", "host_processors_per_node",
    "host_processor_model_name", "host_processor_core_count", "host_processor_vcpu_count",
    "host_processor_frequency", "host_processor_caches", "host_processor_interconnect",
    "host_memory_capacity", "host_storage_type", "host_storage_capacity", "host_networking",
    "host_networking_topology", "host_memory_configuration",
    "accelerators_per_node", "accelerator_model_name", "accelerator_host_interconnect",
    "accelerator_frequency", "accelerator_on-chip_memories",
    "accelerator_memory_configuration", "accelerator_memory_capacity",
    "accelerator_interconnect", "accelerator_interconnect_topology",
    "cooling", "hw_notes", "framework", "other_software_stack", "operating_system", "sw_notes",
)

# The log's `submission_status` words -> the system JSON's availability strings, which
# system_desc_checker requires from ruleset 4.0.0 on.
STATUS = {
    "onprem": "Available on-premise",
    "cloud": "Available cloud",
    "research": "Research, Development, or Internal (RDI)",
    "preview": "Preview",
}

_HOST_FIELDS = ("host_processors_per_node", "host_processor_model_name",
                "host_processor_core_count", "host_processor_vcpu_count",
                "host_processor_frequency", "host_processor_caches", "host_memory_capacity",
                "operating_system")


def _cpuinfo() -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per logical CPU (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return []
    cpus, cur = [], {}
    for line in text.splitlines():
        if not line.strip():
            if cur:
                cpus.append(cur)
                cur = {}
            continue
        key, _, value = line.partition(":")
        cur[key.strip()] = value.strip()
    if cur:
        cpus.append(cur)
    return cpus


def _caches() -> str:
    """Cache sizes of CPU 0 as Linux reports them, e.g. 'L1d 32 KiB, L1i 64 KiB, L2 512 KiB,
    L3 8 MiB' (per instance: L1/L2 per core, L3 per complex or socket)."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    parts = []
    for index in sorted(base.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        if size.endswith("K") and size[:-1].isdigit():
            kib = int(size[:-1])
            size = f"{kib // 1024} MiB" if kib >= 1024 and kib % 1024 == 0 else f"{kib} KiB"
        parts.append(f"L{level}{suffix} {size}")
    return ", ".join(parts)


def _operating_system() -> str:
    kernel = f"{platform.system()} {platform.release()}".strip()
    try:
        pretty = platform.freedesktop_os_release().get("PRETTY_NAME", "")
    except (OSError, AttributeError):
        pretty = ""
    return f"{pretty}, {kernel}" if pretty else kernel


def describe_host() -> dict[str, str]:
    """What this machine says about its host CPU, memory and OS, as system-JSON fields.

    Counts are per processor (socket), as MLPerf system JSONs give them; memory is the
    total RAM in binary units written 'GB', as published submissions do ('23.5 GB').
    Unknown values are empty strings.
    """
    cpus = _cpuinfo()
    sockets = len({c.get("physical id") for c in cpus if "physical id" in c}) or 1
    model = ""
    for key in ("model name", "Model name", "Processor", "cpu model", "Hardware"):
        model = next((c[key] for c in cpus if c.get(key)), "")
        if model:
            break
    if not model:
        model = platform.processor() or platform.machine()
    logical = psutil.cpu_count(logical=True) or len(cpus) or 0
    physical = psutil.cpu_count(logical=False) or 0
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, AttributeError):
        freq = None
    mhz = 0.0
    if freq is not None:
        mhz = freq.max or freq.current or 0.0
    if not mhz:
        try:
            mhz = float(next((c["cpu MHz"] for c in cpus if "cpu MHz" in c), 0.0))
        except ValueError:
            mhz = 0.0
    memory = psutil.virtual_memory().total
    return {
        "host_processors_per_node": str(sockets),
        "host_processor_model_name": model,
        "host_processor_core_count": str(physical // sockets) if physical else "",
        "host_processor_vcpu_count": str(logical // sockets) if logical else "",
        "host_processor_frequency": f"{mhz / 1000:.2f} GHz" if mhz else "",
        "host_processor_caches": _caches(),
        "host_memory_capacity": f"{memory / 2**30:.1f} GB",
        "operating_system": _operating_system(),
    }


def _status(status: str) -> str:
    if status in STATUS.values():
        return status
    if isinstance(status, str) and status.lower() in STATUS:
        return STATUS[status.lower()]
    raise ValueError(f"invalid status {status!r}: use one of {sorted(STATUS)} (the log's "
                     f"submission_status words) or one of {list(STATUS.values())}")


def system_description(*, submitter: str, division: str, status: str, system_name: str,
                       number_of_nodes: int, accelerators_per_node: int,
                       accelerator_model_name: str, accelerator_memory_capacity: str = "",
                       framework: str, other_software_stack: dict | str,
                       host: dict | None = None, notes: str = "") -> dict[str, Any]:
    """Returns a complete system description (all of `REQUIRED_FIELDS`).

    `status` may be the log's short word (cloud, onprem, preview, research) or the long
    availability string. `host` defaults to `describe_host()`; pass the description of the
    real hosts when this is not one of them (a pod described from a workstation). `host` may
    also set any other field (e.g. 'host_networking', 'cooling') to override the empty
    default. `notes` goes to hw_notes.
    """
    if division not in ("closed", "open"):
        raise ValueError(f"invalid division {division!r}: use 'closed' or 'open'")
    for name, value in (("number_of_nodes", number_of_nodes),
                        ("accelerators_per_node", accelerators_per_node)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"invalid {name} {value!r}: use an integer >= 0")
    if not isinstance(other_software_stack, (dict, str)):
        raise TypeError("other_software_stack must be a dict of component -> version or a "
                        f"string, got {type(other_software_stack).__name__}")
    desc: dict[str, Any] = {field: "" for field in REQUIRED_FIELDS}
    desc.update({k: str(v) for k, v in (describe_host() if host is None else host).items()
                 if k not in ("submitter", "division", "status", "system_name")})
    unknown = sorted(set(desc) - set(REQUIRED_FIELDS))
    if unknown:
        raise ValueError(f"host description has fields a system JSON does not: {unknown}; "
                         f"valid fields are {list(REQUIRED_FIELDS)}")
    desc.update({
        "submitter": submitter,
        "division": division,
        "status": _status(status),
        "system_name": system_name,
        "number_of_nodes": str(number_of_nodes),
        "accelerators_per_node": str(accelerators_per_node),
        "accelerator_model_name": accelerator_model_name,
        "accelerator_memory_capacity": accelerator_memory_capacity,
        "framework": framework,
        "other_software_stack": (dict(other_software_stack)
                                 if isinstance(other_software_stack, dict)
                                 else other_software_stack),
        "hw_notes": notes,
    })
    return desc


def write_system_description(path: str | os.PathLike, desc: dict[str, Any]) -> bool:
    """Writes `desc` to `path` atomically; returns whether the file changed.

    A system JSON describes the system as it is now, so a differing file is replaced (whole:
    readers see the old or the new file, never a torn one); an identical one is left untouched.
    An incomplete description is refused rather than written.
    """
    missing = [f for f in REQUIRED_FIELDS if f not in desc]
    if missing:
        raise ValueError(f"system description for {path} lacks required fields {missing}")
    text = json.dumps(desc, indent=2) + "\n"
    path = Path(path)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
    return True
