"""What the benchmarks of this folder share: the peak-RSS memory probe and the report.

Imported by ``speed.py`` and ``linear.py`` as a sibling module (``python
benchmarks/speed.py`` puts this folder first on ``sys.path``).
"""

from __future__ import annotations

import gc
import json
import platform

from gammace_ref.testing import table


def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def rss_peak_extra(fn):
    """Peak resident bytes of ``fn()`` above the resident bytes before it (Linux; ``None`` elsewhere)."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _status("VmRSS")
    out = fn()
    peak = _status("VmHWM")
    del out
    return None if before is None or peak is None else peak - before


def versions():
    """Python, machine and the versions of the array libraries present (and the GPU, if torch sees one)."""
    v = {"python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor()}
    for name in ("numpy", "array_api_compat", "torch", "jax", "optax", "cupy"):
        try:
            v[name] = __import__(name).__version__
        except ImportError:
            pass
    try:
        import torch

        if torch.cuda.is_available():
            v["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return v


def report(rows, columns, json_path=None, **meta):
    """Print ``rows`` (dicts) as a Markdown table and write them, with versions and ``meta``, as JSON.

    ``columns`` maps a header to a format (key = the header) or to ``(key, format)``;
    ``None`` values print empty; a column whose format starts ``{:`` (a number) is right-aligned.
    """
    spec = {h: (c if isinstance(c, tuple) else (h, c)) for h, c in columns.items()}
    align = "".join(">" if fmt.startswith("{:") else "<" for _, fmt in spec.values())
    print(table.render(spec, [[None if r[k] is None else fmt.format(r[k]) for k, fmt in spec.values()] for r in rows],
                       markdown=True, align=align))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"versions": versions(), **meta, "rows": rows}, f, indent=1)
            f.write("\n")
