"""The core under ``jax.sharding`` on 4 host devices: batch-, vocab- and 2-D-sharded logits; and
``gammace_ref.jax.distributed`` (vocabulary-parallel inside ``shard_map``).

Runs in a subprocess (``XLA_FLAGS`` must be set before JAX starts). The
results equal the unsharded NumPy ones to float64 rounding, keep the logits'
sharding, and the vocab-sharded program communicates by all-reduces of
per-row values only: XLA inserts no all-gather of the logits.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("jax", reason="jax is not installed")

SCRIPT = r"""
import json, jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import gammace_ref as G, gammace_ref.jax as GJ
mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("batch", "vocab"))
rng = np.random.default_rng(0)
z = rng.normal(0, 3, (8, 12)); z[0, 3] = 60.0; y = rng.integers(0, 12, 8); y[0] = 3
out = {"devices": len(jax.devices())}
for name, spec in (("batch", P("batch", None)), ("vocab", P(None, "vocab")), ("both", P("batch", "vocab"))):
    zs = jax.device_put(jnp.asarray(z), NamedSharding(mesh, spec))
    ys = jax.device_put(jnp.asarray(y), NamedSharding(mesh, P(spec[0])))
    row = {}
    for loss, fn, extra in (("gamma_ce", G.gamma_ce_value_and_grad, ()), ("tailr", G.tailr_value_and_grad, (0.2,))):
        f = jax.jit(lambda a, b: fn(a, b, 0.3, *extra, reduction="none", label_smoothing=0.1))
        l, g = f(zs, ys)
        rl, rg = fn(z, y, 0.3, *extra, reduction="none", label_smoothing=0.1)
        hlo = f.lower(zs, ys).compile().as_text()
        row[loss] = {"loss": float(np.max(np.abs(np.asarray(l) - rl) / np.abs(rl))),
                     "grad": float(np.max(np.abs(np.asarray(g) - rg)) / np.max(np.abs(rg))),
                     "grad_spec": str(g.sharding.spec),
                     "all_reduce": hlo.count("all-reduce("), "all_gather": hlo.count("all-gather(")}
    gg = jax.jit(jax.grad(lambda a, b: GJ.gamma_ce(a, b, 0.3)))(zs, ys)
    row["adapter_grad"] = float(np.max(np.abs(np.asarray(gg) - G.gamma_ce_grad(z, y, 0.3))))
    out[name] = row
print(json.dumps(out))
"""


def on_4_devices(script, timeout):
    """The JSON that ``script`` prints last, run in a JAX process with 4 host devices."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sharded():
    return on_4_devices(SCRIPT, 300)


@pytest.mark.parametrize("layout", ["batch", "vocab", "both"])
def test_sharded_equals_unsharded(sharded, layout):
    assert sharded["devices"] == 4
    for loss in ("gamma_ce", "tailr"):
        r = sharded[layout][loss]
        assert r["loss"] <= 1e-14 and r["grad"] <= 1e-14, r
        assert r["all_gather"] == 0, r  # the logits are never gathered
    assert sharded[layout]["adapter_grad"] <= 1e-15


def test_vocab_sharding_communicates_by_all_reduce(sharded):
    assert sharded["batch"]["gamma_ce"]["all_reduce"] == 0  # rows are independent
    assert sharded["vocab"]["gamma_ce"]["all_reduce"] > 0
    assert "vocab" in sharded["vocab"]["gamma_ce"]["grad_spec"]  # the gradient stays vocab-sharded


SHARD_MAP = r"""
import json, jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from jax.sharding import NamedSharding, PartitionSpec as P
import gammace_ref.jax as GJ, gammace_ref.jax.distributed as GJD
mesh = jax.make_mesh((4,), ("vocab",))
rng = np.random.default_rng(0)
z = rng.normal(0, 3, (8, 12)); z[0, 3] = 60.0; z[1, 5] = -np.inf; z[2] = [-800.0] * 3 + [0.0] * 9
y = rng.integers(0, 12, 8); y[0] = 3; y[1] = 5; y[2] = 0; y[4] = -100
v = rng.normal(size=z.shape)
put = lambda a, spec: jax.device_put(jnp.asarray(a), NamedSharding(mesh, spec))
zs, vs, ys, gs = put(z, P(None, "vocab")), put(v, P(None, "vocab")), put(y, P()), put(0.3, P())
diff = lambda a, b: float(np.max(np.where(np.asarray(a) == np.asarray(b), 0.0, np.abs(np.asarray(a) - np.asarray(b))),
                                initial=0.0))
out = {"devices": len(jax.devices())}
with jax.set_mesh(mesh):
    for loss, extra in (("gamma_ce", ()), ("tailr", (0.2,))):
        for red in ("mean", "sum", "none"):
            kw = dict(reduction=red, ignore_index=-100, label_smoothing=0.1)
            fs = jax.shard_map(lambda a, b, g: getattr(GJD, loss)(a, b, g, *extra, axis_name="vocab", **kw),
                               mesh=mesh, in_specs=(P(None, "vocab"), P(), P()), out_specs=P())
            f1 = lambda a, b, g: getattr(GJ, loss)(a, b, g, *extra, **kw)
            def run(f, z, y, v, g):
                tot = lambda a, g: jnp.sum(f(a, y, g))
                return (f(z, y, g), jax.grad(tot)(z, g), jax.jvp(lambda a: jax.grad(tot)(a, g), (z,), (v,))[1],
                        jax.grad(tot, argnums=1)(z, g))
            sharded = jax.jit(lambda z, y, v, g: run(fs, z, y, v, g))(zs, ys, vs, gs)
            single = run(f1, jnp.asarray(z), jnp.asarray(y), jnp.asarray(v), jnp.asarray(0.3))
            scale = max(float(np.max(np.abs(np.where(np.isfinite(single[0]), single[0], 0.0)))), 1e-300)
            out[f"{loss}-{red}"] = [diff(sharded[0], single[0]) / scale] + [diff(a, b) for a, b in
                                                                            zip(sharded[1:], single[1:])]
    hlo = jax.jit(jax.grad(lambda a: jnp.sum(jax.shard_map(lambda a, b: GJD.gamma_ce(a, b, 0.3, axis_name="vocab"),
          mesh=mesh, in_specs=(P(None, "vocab"), P()), out_specs=P())(a, ys)))).lower(zs).compile().as_text()
    out["all_gather"], out["all_reduce"] = hlo.count("all-gather("), hlo.count("all-reduce(")
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def shard_mapped():
    return on_4_devices(SHARD_MAP, 600)


@pytest.mark.parametrize("case", [f"{loss}-{red}" for loss in ("gamma_ce", "tailr") for red in ("mean", "sum", "none")])
def test_shard_map_vocab_parallel_equals_one_device(shard_mapped, case):
    # loss, gradient (this device's slices, gathered by out_specs), HVP and dL/dγ (0 for TaiLr) on 4 devices;
    # rows with 1-p ~ 1e-26, a -inf target (TaiLr: an infinite loss, equal), log p ~ -800 and an ignored one;
    # the loss relative to the largest (the row sums are added in another order: ~1 ulp), the rest absolute
    assert shard_mapped["devices"] == 4
    loss, grad, hvp, dgamma = shard_mapped[case]
    assert loss <= 4.5e-16 and grad <= 1e-16 and hvp <= 1e-16 and dgamma <= 1e-15, shard_mapped[case]


def test_shard_map_communicates_per_row_values_only(shard_mapped):
    assert shard_mapped["all_gather"] == 0 and shard_mapped["all_reduce"] > 0
