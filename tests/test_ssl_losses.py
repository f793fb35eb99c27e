"""SmartPretrain losses: InfoNCE against a brute-force reference, reconstruction segments, and the 2-process
(gloo) equivalence: gathered keys + global normalisation == one process that sees the concatenated batch."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from losses.contrastive_loss import ContrastiveLoss, all_gather_rows
from losses.reconstruction_loss import ReconstructionLoss, gather_segment_displacements, recurrence_segments

TEMPERATURE = 0.07


def reference_infonce(queries, query_mask, keys, key_mask, positive_index, self_index, temperature):
    """Official formula written out per query: InfoNCE over valid keys minus the own anchor key, x 2T."""
    per_rec = []
    for r in range(queries.shape[1]):
        losses = []
        for i in range(queries.shape[0]):
            if not query_mask[i]:
                continue
            q = F.normalize(queries[i, r], dim=-1)
            candidates = [j for j in range(keys.shape[0]) if key_mask[j] and j != self_index[i]]
            k = F.normalize(keys[candidates, r], dim=-1)
            logits = k @ q / temperature
            losses.append(-torch.log_softmax(logits, 0)[candidates.index(int(positive_index[i]))])
        per_rec.append(torch.stack(losses).mean())
    return torch.stack(per_rec).mean() * 2 * temperature


def make_batch(num_agents, seed, dim=6, num_rec=3):
    """Queries/keys of one process in the SmartPretrain layout: keys = [anchor keys; target keys]."""
    gen = torch.Generator().manual_seed(seed)
    queries = torch.randn(num_agents, num_rec, dim, generator=gen)
    keys = torch.randn(2 * num_agents, num_rec, dim, generator=gen)
    anchor_valid = torch.rand(num_agents, generator=gen) > 0.2
    target_valid = torch.rand(num_agents, generator=gen) > 0.3
    anchor_valid[0] = target_valid[0] = True
    agents = torch.arange(num_agents)
    return dict(queries=queries, query_mask=anchor_valid & target_valid, keys=keys,
                key_mask=torch.cat([anchor_valid, target_valid]), positive_index=agents + num_agents,
                self_index=agents)


def test_infonce_matches_reference_formula():
    batch = make_batch(7, seed=0)
    out = ContrastiveLoss(TEMPERATURE)(**batch)
    expected = reference_infonce(temperature=TEMPERATURE, **batch)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    assert out.num_queries == batch['query_mask'].sum() and out.num_keys == batch['key_mask'].sum()


def test_infonce_accuracy_and_masking():
    batch = make_batch(6, seed=1)
    # make every positive key equal to its query: all queries find their positive
    batch['keys'][batch['positive_index']] = batch['queries']
    out = ContrastiveLoss(TEMPERATURE)(**batch)
    assert out.accuracy == 1.0
    # an invalid key may hold anything, even inf: it must not change the loss
    invalid = (~batch['key_mask']).nonzero()[0, 0] if (~batch['key_mask']).any() else None
    if invalid is not None:
        poisoned = dict(batch, keys=batch['keys'].clone())
        poisoned['keys'][invalid] = 1e6
        torch.testing.assert_close(ContrastiveLoss(TEMPERATURE)(**poisoned).loss, out.loss)
    # the agent's own anchor key is excluded even when it is identical to the query
    batch['keys'][batch['self_index']] = batch['queries']
    assert ContrastiveLoss(TEMPERATURE)(**batch).accuracy == 1.0
    # no query at all: zero loss, finite gradient
    empty = dict(batch, query_mask=torch.zeros_like(batch['query_mask']))
    empty['queries'] = batch['queries'].clone().requires_grad_()
    loss = ContrastiveLoss(TEMPERATURE)(**empty).loss
    loss.backward()
    assert loss == 0 and torch.isfinite(empty['queries'].grad).all()


def test_recurrence_segments_cover_the_window():
    assert recurrence_segments(50, 60, 3) == [(0, 10), (10, 30), (30, 50)]  # official split for AV2
    assert recurrence_segments(60, 60, 3) == [(0, 20), (20, 40), (40, 60)]
    assert recurrence_segments(50, 60, 1) == [(0, 50)]
    for window, future, rec in ((50, 60, 2), (11, 80, 4), (50, 60, 6)):
        segments = recurrence_segments(window, future, rec)
        assert segments[0][0] == 0 and segments[-1][1] == window
        assert all(a[1] == b[0] for a, b in zip(segments, segments[1:]))


def test_segment_gather_takes_each_segment_from_its_recurrence():
    num_agents, num_rec, steps = 2, 3, 110
    # displacement of recurrence r at absolute step t encodes (r, t)
    displacements = torch.zeros(num_agents, num_rec, steps, 2)
    displacements[..., 0] = torch.arange(num_rec).view(1, -1, 1).float()
    displacements[..., 1] = torch.arange(steps).float()
    step_index = torch.tensor([55, 60]).unsqueeze(1) + torch.arange(50)
    out = gather_segment_displacements(displacements, step_index, recurrence_segments(50, 60, 3))
    assert out.shape == (2, 50, 2)
    assert torch.equal(out[:, :10, 0], torch.zeros(2, 10)) and torch.equal(out[:, 10:30, 0], torch.ones(2, 20))
    assert torch.equal(out[:, 30:, 0], torch.full((2, 20), 2.0))
    assert torch.equal(out[..., 1], step_index.float())


def test_reconstruction_loss_averages_agents_per_step_then_steps():
    pred = torch.zeros(3, 4, 2)
    target = torch.zeros(3, 4, 2)
    target[0, :, 0] = 3.0     # smooth-L1 of 3 = 2.5
    target[1, :, 1] = 0.5     # 0.5 * 0.5^2 = 0.125
    target[2] = float('inf')  # masked out entirely
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    loss = ReconstructionLoss()(pred, target, mask)
    # step 0: (2.5 + 0.125) / 2, step 1: 2.5 / 1, steps 2-3: no valid agent -> 0; mean over 4 steps
    torch.testing.assert_close(loss, torch.tensor(((2.5 + 0.125) / 2 + 2.5) / 4))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank, world, port, result_path, sizes):
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
    try:
        batch = make_batch(sizes[rank], seed=10 + rank)
        batch['queries'].requires_grad_()
        out = ContrastiveLoss(TEMPERATURE)(**batch)
        out.loss.backward()
        pred = torch.randn(sizes[rank], 5, 2, generator=torch.Generator().manual_seed(20 + rank), requires_grad=True)
        target = torch.randn(sizes[rank], 5, 2, generator=torch.Generator().manual_seed(30 + rank))
        mask = torch.rand(sizes[rank], 5, generator=torch.Generator().manual_seed(40 + rank)) > 0.4
        rec = ReconstructionLoss()(pred, target, mask)
        rec.backward()
        gathered, offset = all_gather_rows(torch.full((sizes[rank], 2), float(rank)))
        torch.save({'loss': out.loss.detach(), 'accuracy': out.accuracy, 'num_queries': out.num_queries,
                    'num_keys': out.num_keys, 'query_grad': batch['queries'].grad, 'rec': rec.detach(),
                    'rec_grad': pred.grad, 'gathered': gathered, 'offset': offset}, f'{result_path}.{rank}')
    finally:
        dist.destroy_process_group()


def test_two_process_gathered_losses_equal_single_process_on_concatenated_batch(tmp_path):
    sizes = (5, 8)  # unequal local batches: the gather must handle variable key counts
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / 'result'), sizes), nprocs=2, join=True)
    results = [torch.load(f'{tmp_path / "result"}.{rank}') for rank in range(2)]

    # single process over the concatenated batch: keys laid out rank by rank, indices shifted accordingly
    parts = [make_batch(n, seed=10 + rank) for rank, n in enumerate(sizes)]
    offsets = [0, 2 * sizes[0]]
    single = dict(queries=torch.cat([p['queries'] for p in parts]).requires_grad_(),
                  query_mask=torch.cat([p['query_mask'] for p in parts]),
                  keys=torch.cat([p['keys'] for p in parts]), key_mask=torch.cat([p['key_mask'] for p in parts]),
                  positive_index=torch.cat([p['positive_index'] + o for p, o in zip(parts, offsets)]),
                  self_index=torch.cat([p['self_index'] + o for p, o in zip(parts, offsets)]))
    out = ContrastiveLoss(TEMPERATURE)(**single)
    out.loss.backward()
    # DDP averages gradients and synchronised logging averages values over processes
    torch.testing.assert_close((results[0]['loss'] + results[1]['loss']) / 2, out.loss.detach())
    for r in results:
        assert r['accuracy'] == out.accuracy and r['num_queries'] == out.num_queries
        assert r['num_keys'] == out.num_keys
    torch.testing.assert_close(torch.cat([r['query_grad'] for r in results]) / 2, single['queries'].grad)
    # keys of every rank are seen by every rank, in rank order
    assert results[0]['offset'] == 0 and results[1]['offset'] == sizes[0]
    assert torch.equal(results[0]['gathered'][:, 0], torch.tensor([0.0] * sizes[0] + [1.0] * sizes[1]))

    preds = [torch.randn(n, 5, 2, generator=torch.Generator().manual_seed(20 + rank)) for rank, n in enumerate(sizes)]
    targets = [torch.randn(n, 5, 2, generator=torch.Generator().manual_seed(30 + rank)) for rank, n in enumerate(sizes)]
    masks = [torch.rand(n, 5, generator=torch.Generator().manual_seed(40 + rank)) > 0.4 for rank, n in enumerate(sizes)]
    pred = torch.cat(preds).requires_grad_()
    rec = ReconstructionLoss()(pred, torch.cat(targets), torch.cat(masks))
    rec.backward()
    torch.testing.assert_close((results[0]['rec'] + results[1]['rec']) / 2, rec.detach())
    torch.testing.assert_close(torch.cat([r['rec_grad'] for r in results]) / 2, pred.grad)
