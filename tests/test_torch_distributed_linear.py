"""Vocabulary-parallel γ-CE / TaiLr from hidden states on torch.distributed (gloo, 2 processes on this CPU).

Each rank holds a slice of the lm_head's rows (and bias); every rank's loss
and ``hidden`` gradient, and the concatenated ``weight``/``bias`` gradient
slices, must equal the single-process :mod:`gammace_ref.linear` result, with
the slices split further into vocabulary blocks on one case.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
dist = pytest.importorskip("torch.distributed", reason="torch.distributed is not available")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from gammace_ref import linear  # noqa: E402

from test_torch_distributed import _free_port  # noqa: E402

N, C, H = 7, 13, 4
# (name, kwargs, vocabulary blocks within a rank's slice)
CASES = [("gamma_ce", dict(reduction="mean", ignore_index=-100, label_smoothing=0.1), None),
         ("tailr", dict(reduction="sum", label_smoothing=0.1), 3),
         ("gamma_ce", dict(reduction="none", ignore_index=-100), 2)]


def _inputs():
    rng = np.random.default_rng(4)
    h = rng.normal(size=(N, H))
    w = rng.normal(size=(C, H)) * 2
    b = rng.normal(size=C)
    h[0] = 10 * w[4]  # p -> 1 for the target 4
    y = np.array([4, 12, 0, -100, 7, 5, 6])
    return h, w, b, y


def _worker(rank, world, port, out_dir):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import gammace_ref.torch.distributed as GD

        h, w, b, y = _inputs()
        lo, hi = (0, 6) if rank == 0 else (6, C)
        for i, (name, kw, block) in enumerate(CASES):
            ht = torch.tensor(h, requires_grad=True)
            wl = torch.tensor(w[lo:hi], requires_grad=True)
            bl = torch.tensor(b[lo:hi], requires_grad=True)
            yy = torch.tensor(y if "ignore_index" in kw else np.where(y < 0, 3, y))
            sizes = {} if block is None else dict(chunk_size=3, memory_budget=linear.TEMPORARIES * 8 * 3 * block)
            threshold = (0.2,) if name == "tailr" else ()
            loss = getattr(GD, f"linear_{name}")(ht, wl, yy, 0.3, *threshold, bias=bl, offset=lo, n_classes=C,
                                                 compiled=False, **kw, **sizes)
            ct = torch.linspace(0.5, 2.0, N, dtype=torch.float64) if kw["reduction"] == "none" else 2.0
            (loss * ct).sum().backward()
            for key, v in dict(loss=loss.detach(), h=ht.grad, w=wl.grad, b=bl.grad).items():
                np.save(f"{out_dir}/r{rank}_c{i}_{key}.npy", v.numpy())
    finally:
        dist.destroy_process_group()


def test_vocab_parallel_linear_equals_single_process(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    h, w, b, y = _inputs()
    for i, (name, kw, _) in enumerate(CASES):
        yy = y if "ignore_index" in kw else np.where(y < 0, 3, y)
        fn = linear.gamma_ce_value_and_grad if name == "gamma_ce" else linear.tailr_value_and_grad
        threshold = (0.2,) if name == "tailr" else ()
        if kw["reduction"] == "none":  # the vjp with per-target weights: d/dθ Σ c_i·loss_i
            ct = np.linspace(0.5, 2.0, N)
            ref_loss = fn(h, w, yy, 0.3, *threshold, bias=b, **kw).loss
            g_rows = [fn(h[j:j + 1], w, yy[j:j + 1], 0.3, *threshold, bias=b, **dict(kw, reduction="sum"))
                      for j in range(N)]
            ref_h = np.concatenate([ct[j] * g.hidden for j, g in enumerate(g_rows)])
            ref_w = sum(ct[j] * g.weight for j, g in enumerate(g_rows))
            ref_b = sum(ct[j] * g.bias for j, g in enumerate(g_rows))
        else:
            ref = fn(h, w, yy, 0.3, *threshold, bias=b, **kw)
            ref_loss, ref_h, ref_w, ref_b = ref.loss, 2 * ref.hidden, 2 * ref.weight, 2 * ref.bias
        got = {k: [np.load(tmp_path / f"r{r}_c{i}_{k}.npy") for r in range(2)] for k in ("loss", "h", "w", "b")}
        for r in range(2):  # every rank: the whole loss and the whole gradient of hidden
            np.testing.assert_allclose(got["loss"][r], ref_loss, rtol=1e-13, atol=0)
            np.testing.assert_allclose(got["h"][r], ref_h, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(np.concatenate(got["w"]), ref_w, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(np.concatenate(got["b"]), ref_b, rtol=1e-12, atol=1e-15)


def test_bad_slice_is_named():
    import gammace_ref.torch.distributed as GD

    h, w = torch.zeros(2, 3, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"offset 9 and n_classes 11 do not hold a slice of 4 classes"):
        GD.linear_gamma_ce(h, w, torch.tensor([0, 1]), 0.1, offset=9, n_classes=11)
