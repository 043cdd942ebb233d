"""Byte sizes as people write them ("4GiB", "512MB", "1.5G", "0") and back, and cache capacities
printed in their unit (bytes, or entries with `--object-size unit`)."""

import re

from mtbench.errors import MtbenchError

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4,
}
OBJECT_SIZES = ("bytes", "unit")  # --object-size: real entry bytes, or every entry counts 1 (libCacheSim's unit size)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, what: str = "size") -> int:
    """Parse one size string into bytes; raise MtbenchError naming `what` if it is malformed."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise MtbenchError(f"{what}: cannot read {text!r} as a size (examples: 4GiB, 512MB, 1.5G, 1000)")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_size_list(text: str, what: str = "size") -> list[int]:
    """Parse a comma-separated list of sizes ("2GiB,4GiB")."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise MtbenchError(f"{what}: no size given")
    return [parse_size(p, what) for p in parts]


def format_bytes(n: float) -> str:
    """Human-readable binary size: 1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_capacity(value: float, object_size: str = "bytes") -> str:
    """A cache capacity for labels and tables: '4 GiB', '1.5 GiB' (bytes), or '10,000 entries' (unit size).

    `object_size` is one of OBJECT_SIZES; with "unit" a capacity counts entries, not bytes."""
    if object_size not in OBJECT_SIZES:
        raise MtbenchError(f"--object-size: expected one of {', '.join(OBJECT_SIZES)}, got {object_size!r}")
    if object_size == "unit":
        return "1 entry" if value == 1 else f"{value:,.0f} entries"
    text = format_bytes(value)
    return text.replace(".0 ", " ")
