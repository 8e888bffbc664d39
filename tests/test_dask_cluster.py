"""Dask arrays chunked along the batch, computed on a ``dask.distributed`` LocalCluster of processes.

The logits (4000 × 1000 float64, 32 MB) are larger than a worker's chunk
(500 rows, 4 MB); the γ-CE and TaiLr values and gradients computed by the
two worker processes equal NumPy's to float64 rounding (the per-row work is
the same arithmetic; only the final sum over chunks is reordered).
"""

import numpy as np
import pytest

pytest.importorskip("dask.array", reason="dask is not installed")
distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")

import dask.array as da  # noqa: E402

import gammace_ref as G  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as c:
        yield c


def test_local_cluster_equals_numpy(client):
    # Generated on the workers (no 32 MB graph), plus one small block of hard rows.
    rs = da.random.RandomState(3)
    hard = np.zeros((2, 1000))
    hard[0, 5] = 60.0  # p -> 1
    zd = da.concatenate([da.from_array(hard, chunks=(2, -1)),
                         rs.normal(0.0, 4.0, size=(3998, 1000), chunks=(500, -1))]).rechunk((500, -1))
    yd = da.concatenate([da.from_array(np.array([5, -100]), chunks=2),
                         rs.randint(0, 1000, size=3998, chunks=500)]).rechunk(500)
    z, y = client.compute([zd, yd], sync=True)
    assert zd.numblocks == (8, 1) and z[0, 5] == 60.0
    for fn, extra in ((G.gamma_ce_value_and_grad, ()), (G.tailr_value_and_grad, (0.2,))):
        for reduction in ("none", "mean"):
            kw = dict(reduction=reduction, ignore_index=-100, label_smoothing=0.1)
            loss, grad = fn(zd, yd, 0.1, *extra, **kw)
            loss, grad = client.compute([loss, grad], sync=True)
            ref_l, ref_g = fn(z, y, 0.1, *extra, **kw)
            np.testing.assert_allclose(loss, ref_l, rtol=1e-13)
            np.testing.assert_allclose(grad, ref_g, rtol=1e-13, atol=1e-300)
