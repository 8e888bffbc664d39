# Doctest collection imports every module of the package: skip the adapters
# whose framework is not installed here.
import importlib.util

collect_ignore = [f"gammace_ref/{m}.py" for m in ("torch", "jax") if importlib.util.find_spec(m) is None]
