"""Edge lists built in the loader workers (utils.prebuilt_graph) on real Argoverse 2 scenes: the collate function
attaches exactly the model's own graph, and QCNet's forward and fixed-shape runner use it instead of building one."""
import os

import pytest
import torch
from torch_geometric.loader import DataLoader

from predictors import QCNet
from utils.prebuilt_graph import GRAPH_ATTRIBUTE, GraphBuildingCollate, prebuilt_graph
from utils.static_graph import StaticGraphRunner

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
    loader.collate_fn = GraphBuildingCollate(loader.collate_fn, builder)
    return next(iter(loader))


def test_worker_attaches_the_models_own_graph(scenes):
    model = tiny_model()
    batch = loader_batch(scenes, tiny_model(), num_workers=1)  # built in a worker process by a twin model
    graph = prebuilt_graph(batch)
    assert graph is not None
    delattr(batch, GRAPH_ATTRIBUTE)
    expected = model.build_graph(batch)
    assert sorted(graph) == sorted(expected)
    for name in expected:
        assert torch.equal(graph[name], expected[name]), name


def test_forward_and_runner_use_the_prebuilt_graph(scenes, monkeypatch):
    model = tiny_model().train()
    plain = loader_batch(scenes, model, num_workers=0)
    graph = prebuilt_graph(plain)
    delattr(plain, GRAPH_ATTRIBUTE)
    reference = model(plain)
    ref_losses = model.compute_losses(plain, reference)

    with_graph = loader_batch(scenes, model, num_workers=0)

    def refuse(data):
        raise AssertionError('build_graph called although the batch carries its graph')

    monkeypatch.setattr(model, 'build_graph', refuse)
    outputs = model(with_graph)
    for name in reference:
        assert torch.equal(outputs[name], reference[name]), name
    runner = StaticGraphRunner(model, 'train', TINY_QCNET['num_historical_steps'], TINY_QCNET['num_modes'],
                               capture=False)
    losses = runner(with_graph)
    ref = float(ref_losses['loss'].detach())
    assert abs(float(losses['loss']) - ref) < 1e-5 * max(1.0, abs(ref))
    assert set(prebuilt_graph(with_graph)) == set(graph)


def test_collate_refuses_a_model_without_graph_construction():
    with pytest.raises(ValueError, match='has no build_graph'):
        GraphBuildingCollate(lambda items: items, torch.nn.Linear(2, 2))
