import math

import torch

from hpeft.metrics import NMSEdB, nmse_db


def test_nmse_is_total_error_over_total_energy():
    torch.manual_seed(0)
    h = torch.randn(10, 2, 4, 6, dtype=torch.float64)
    est = h + 0.1 * torch.randn_like(h)
    expected = 10 * math.log10(((est - h) ** 2).sum().item() / (h**2).sum().item())
    metric = NMSEdB()
    for i in range(0, 10, 3):  # uneven batches
        metric.update(est[i : i + 3], h[i : i + 3])
    assert abs(metric.compute().item() - expected) < 1e-9
    assert abs(nmse_db(est, h) - expected) < 1e-9


def test_nmse_is_not_a_mean_of_batch_db_values():
    # Two batches with very different error levels: the mean of their dB values is not the set's NMSE.
    h = torch.ones(2, 1, 1, 4, dtype=torch.float64)
    est = h.clone()
    est[0] += 1.0  # NMSE 0 dB on batch 0
    est[1] += 0.01  # NMSE -40 dB on batch 1
    metric = NMSEdB()
    metric.update(est[:1], h[:1])
    metric.update(est[1:], h[1:])
    mean_of_db = (nmse_db(est[:1], h[:1]) + nmse_db(est[1:], h[1:])) / 2
    assert abs(mean_of_db - (-20.0)) < 1e-6
    assert abs(metric.compute().item() - 10 * math.log10((4 + 4e-4) / 8)) < 1e-9


def test_states_merged_across_processes_equal_the_whole_set():
    # What DDP does: sum each process's states. Two halves merged == one metric over everything.
    torch.manual_seed(1)
    h, est = torch.randn(8, 2, 3, 3), torch.randn(8, 2, 3, 3)
    a, b, whole = NMSEdB(), NMSEdB(), NMSEdB()
    a.update(est[:5], h[:5])
    b.update(est[5:], h[5:])
    whole.update(est, h)
    a.merge_state(b)
    assert torch.allclose(a.compute(), whole.compute(), atol=1e-12)
