"""Edge lists built in the loader workers (acceleration.edge_lists_in_workers) on real Argoverse 2 scenes: the collate
function attaches exactly the model's own edge lists, and QCNet's forward and CUDA-graph step use them instead of
building their own."""
import os

import pytest
import torch
from torch_geometric.loader import DataLoader

from predictors import QCNet
from acceleration.apply import apply
from acceleration.cuda_graph_step import CudaGraphStep
from acceleration.edge_lists_in_workers import (EDGE_LISTS_ATTRIBUTE, EdgeListCollate, attached_edge_lists,
                                                edge_list_builder_for)
from acceleration.options import PRESETS
from acceleration.padded_qcnet_batch import QCNetPadding

from tiny_configs import TINY_QCNET
from sample_data import AV2_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AV2_DIR = str(AV2_DIR)
TRAIN_IDS = ['0a1e6f0a-1817-4a98-b02e-db8c9327d151', '0a0a2bb7-c4f4-44cd-958a-9ee15cb34aca']

pytestmark = pytest.mark.skipif(not os.path.isdir(AV2_DIR),
                                reason=f'real Argoverse 2 samples not found at {AV2_DIR}')


@pytest.fixture(scope='module')
def scenes():
    from datasets import load_argoverse_v2_scenario, process_scenario
    from transforms.target_builder import TargetBuilder
    return [TargetBuilder(50, 60)(process_scenario(load_argoverse_v2_scenario(os.path.join(AV2_DIR, 'train', s))))
            for s in TRAIN_IDS]


def tiny_model():
    torch.manual_seed(0)
    return QCNet(**dict(TINY_QCNET, dropout=0.0))


def loader_batch(scenes, builder, num_workers):
    loader = DataLoader(scenes, batch_size=len(scenes), shuffle=False, num_workers=num_workers)
    loader.collate_fn = EdgeListCollate(loader.collate_fn, builder)
    return next(iter(loader))


def test_worker_attaches_the_models_own_edge_lists(scenes):
    model = apply(tiny_model(), PRESETS['fast'])
    builder = edge_list_builder_for(model, num_workers=1)  # plain CPU twin: picklable for spawned workers too
    assert builder.fixed_shape_step is None and 'ops' not in vars(builder.decoder.y_emb)
    batch = loader_batch(scenes, builder, num_workers=1)  # built in a worker process
    graph = attached_edge_lists(batch)
    assert graph is not None
    delattr(batch, EDGE_LISTS_ATTRIBUTE)
    expected = model.build_graph(batch)
    assert sorted(graph) == sorted(expected)
    for name in expected:
        assert torch.equal(graph[name], expected[name]), name


def test_forward_and_runner_use_the_attached_edge_lists(scenes, monkeypatch):
    model = tiny_model().train()
    plain = loader_batch(scenes, model, num_workers=0)
    graph = attached_edge_lists(plain)
    delattr(plain, EDGE_LISTS_ATTRIBUTE)
    reference = model(plain)
    ref_losses = model.compute_losses(plain, reference)

    with_graph = loader_batch(scenes, model, num_workers=0)

    def refuse(data):
        raise AssertionError('build_graph called although the batch carries its graph')

    monkeypatch.setattr(model, 'build_graph', refuse)
    outputs = model(with_graph)
    for name in reference:
        assert torch.equal(outputs[name], reference[name]), name
    runner = CudaGraphStep(model, QCNetPadding(model), capture=False).training_runner
    losses = runner(with_graph)
    ref = float(ref_losses['loss'].detach())
    assert abs(float(losses['loss']) - ref) < 1e-5 * max(1.0, abs(ref))
    assert set(attached_edge_lists(with_graph)) == set(graph)


def test_collate_refuses_a_model_without_edge_list_construction():
    with pytest.raises(ValueError, match='has no build_graph'):
        EdgeListCollate(lambda items: items, torch.nn.Linear(2, 2))
