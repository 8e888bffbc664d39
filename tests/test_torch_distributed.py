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


def _maml_worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=1)
    try:
        import gammace_ref.torch.distributed as GD

        x, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor(_inputs()[1] % C)
        w = torch.randn(C, 4, dtype=torch.float64, requires_grad=True)
        results = []
        for loss_of in (lambda w: GD.gamma_ce(x @ w.T, y, 0.3, offset=0, n_classes=C),
                        lambda w: GD.linear_gamma_ce(x, w, y, 0.3, offset=0, n_classes=C)):
            (g,) = torch.autograd.grad(loss_of(w), w, create_graph=True)  # an inner step, as MAML's
            try:
                loss_of(w - 0.5 * g).backward()
                results.append("silent")
            except NotImplementedError as exc:
                results.append(str(exc))
        with open(f"{out_dir}/maml.txt", "w") as f:
            f.write("\n".join(results))
    finally:
        dist.destroy_process_group()


def test_second_order_raises_never_silently_first_order(tmp_path):
    # issue 20 item 2 on the vocabulary-parallel functions: the outer backward of a MAML step raises
    torch.multiprocessing.spawn(_maml_worker, args=(_free_port(), str(tmp_path)), nprocs=1, join=True)
    lines = (tmp_path / "maml.txt").read_text().splitlines()
    assert len(lines) == 2 and all("second derivatives" in line for line in lines), lines
