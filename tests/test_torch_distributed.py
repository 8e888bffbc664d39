"""Vocabulary-parallel γ-CE / TaiLr on torch.distributed (gloo, 2 and 4 processes on this CPU).

Each rank holds a slice of the classes; every rank's loss and the
concatenated gradient slices must equal the single-process result (the same
arithmetic: float64 values agree to the last bit or to a few ULPs where the
all-reduce sums in another order).
"""

import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
dist = pytest.importorskip("torch.distributed", reason="torch.distributed is not available")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import gammace_ref as G  # noqa: E402

C = 11
CASES = [("gamma_ce", dict(reduction="none")),
         ("gamma_ce", dict(reduction="mean", ignore_index=-100, label_smoothing=0.1)),
         ("tailr", dict(reduction="sum", label_smoothing=0.1)),
         ("tailr", dict(reduction="mean", ignore_index=-100))]


def _inputs():
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 3.0, size=(6, C))
    z[0, 4] = 60.0  # p -> 1
    z[1, :3] = -np.inf  # masked classes, one of them the target
    z[2, 7] = -800.0
    y = np.array([4, 1, 2, 10, -100, 0])
    return z, y


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import gammace_ref.torch.distributed as GD

        z, y = _inputs()
        bounds = np.linspace(0, C, world + 1).astype(int)
        lo, hi = bounds[rank], bounds[rank + 1]
        for i, (name, kw) in enumerate(CASES):
            zl = torch.tensor(z[:, lo:hi], requires_grad=True)
            extra = (0.2,) if name == "tailr" else ()
            yy = torch.tensor(y if "ignore_index" in kw else np.where(y < 0, 3, y))
            loss = getattr(GD, name)(zl, yy, 0.3, *extra, offset=int(lo), n_classes=C, **kw)
            loss.backward(torch.ones_like(loss) * 2.0)
            np.save(f"{out_dir}/r{rank}_c{i}_loss.npy", loss.detach().numpy())
            np.save(f"{out_dir}/r{rank}_c{i}_grad.npy", zl.grad.numpy())
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2, 4])
def test_vocab_parallel_equals_single_process(world, tmp_path):
    torch.multiprocessing.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    z, y = _inputs()
    for i, (name, kw) in enumerate(CASES):
        extra = (0.2,) if name == "tailr" else ()
        yy = y if "ignore_index" in kw else np.where(y < 0, 3, y)
        ref_l, ref_g = getattr(G, f"{name}_value_and_grad")(z, yy, 0.3, *extra, **kw)
        losses = [np.load(tmp_path / f"r{r}_c{i}_loss.npy") for r in range(world)]
        grad = np.concatenate([np.load(tmp_path / f"r{r}_c{i}_grad.npy") for r in range(world)], axis=1)
        for lv in losses:  # every rank holds the full loss
            np.testing.assert_allclose(lv, ref_l, rtol=1e-15, atol=0)
        np.testing.assert_allclose(grad, 2.0 * ref_g, rtol=1e-15, atol=0)


def test_bad_slice_is_named():
    import gammace_ref.torch.distributed as GD

    with pytest.raises(ValueError, match="offset 9 and n_classes 11"):
        GD.gamma_ce(torch.zeros(2, 4, dtype=torch.float64), torch.tensor([0, 1]), 0.1, offset=9, n_classes=11)
