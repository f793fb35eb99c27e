"""The CUDA-graph step (acceleration.cuda_graph_step) with QCNet's padding (acceleration.padded_qcnet_batch) on real
Argoverse 2 scenes: the padded forward, losses and gradients equal the unpadded ones; capacities; the --cuda_graphs
training path of the Lightning module (on CPU the padded step runs without capture)."""
import os

import pytest
import torch
from torch_geometric.data import Batch

from predictors import QCNet
from acceleration.cuda_graph_step import CapacityLadder, CudaGraphStep
from acceleration.padded_qcnet_batch import QCNET_EDGE_LAYOUTS, PaddedQCNetBatch, QCNetPadding
from acceleration.padded_qcnet_batch import qcnet_sizes as graph_sizes

from tiny_configs import TINY_QCNET
from padded_step_checks import assert_close, check_padded_training_step, fit_two_epochs
from sample_data import AV2_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AV2_DIR = str(AV2_DIR)
TRAIN_IDS = ['0a1e6f0a-1817-4a98-b02e-db8c9327d151', '0a0a2bb7-c4f4-44cd-958a-9ee15cb34aca']

pytestmark = pytest.mark.skipif(not os.path.isdir(AV2_DIR),
                                reason=f'real Argoverse 2 samples not found at {AV2_DIR}')
STEPS, MODES = TINY_QCNET['num_historical_steps'], TINY_QCNET['num_modes']


@pytest.fixture(scope='module')
def batch():
    from datasets import load_argoverse_v2_scenario, process_scenario
    from transforms.target_builder import TargetBuilder
    scenes = [TargetBuilder(50, 60)(process_scenario(load_argoverse_v2_scenario(os.path.join(AV2_DIR, 'train', s))))
              for s in TRAIN_IDS]
    return Batch.from_data_list(scenes)


def required_capacities(sizes, extra=1):
    """The smallest capacities that hold ``sizes`` (each count + ``extra`` padding rows)."""
    return {name: int(count) + extra for name, count in sizes.items()}


def padded_forward(model, batch, capacities):
    """One eager forward on ``batch`` padded to ``capacities``: (outputs of all padded agents, the padded batch)."""
    with torch.no_grad():
        graph = model.build_graph(batch)
    static = PaddedQCNetBatch(batch, capacities, STEPS, MODES)
    static.fill(batch, graph)
    return model(static.data, static.edge_lists), static


def tiny_model(**overrides):
    torch.manual_seed(0)
    return QCNet(**dict(TINY_QCNET, **overrides))


def roomy_capacities(model, batch, extra=37):
    """Capacities with a few dozen padded rows of every kind (odd numbers: no accidental alignment)."""
    sizes = graph_sizes(batch, model.build_graph(batch))
    return required_capacities(sizes, extra=extra)


def test_padded_forward_equals_unpadded(batch):
    model = tiny_model().eval()
    with torch.no_grad():
        expected = model(batch)
        padded, static = padded_forward(model, batch, roomy_capacities(model, batch))
    num_agents = batch['agent']['num_nodes']
    assert padded['pi'].size(0) == static.capacities['agent'] > num_agents
    for name, value in expected.items():
        assert_close(padded[name][:num_agents], value, name)
        assert torch.isfinite(padded[name]).all(), f'{name}: padded rows are not finite'


def test_padded_losses_and_gradients_equal_unpadded(batch):
    model = tiny_model(dropout=0.0).train()
    check_padded_training_step(model, QCNetPadding(model), batch, ('agent',))


def test_infer_runner_matches_forward_and_reuses_capacity(batch):
    model = tiny_model().eval()
    runner = CudaGraphStep(model, QCNetPadding(model), capture=False).inference_runner
    with torch.no_grad():
        expected = model(batch)
    first = runner(batch)
    second = runner(batch)
    assert len(runner._entries) == 1  # same sizes, same capacity
    for name, value in expected.items():
        assert first[name].shape == value.shape
        assert_close(first[name], value, name)
        assert torch.equal(first[name], second[name])


def test_infer_runner_takes_batches_without_targets_after_batches_with(batch):
    """Validation batches carry targets, test batches do not: one runner serves both (separate static buffers)."""
    model = tiny_model().eval()
    runner = CudaGraphStep(model, QCNetPadding(model), capture=False).inference_runner
    with_targets = runner(batch)
    test_like = batch.clone()
    del test_like['agent']['target']
    without = runner(test_like)
    assert len(runner._entries) == 2 and runner.capacity_rungs() == [next(iter(runner._entries))[0]]
    for name, value in with_targets.items():
        assert torch.equal(without[name], value)


def test_static_batch_pads_edges_onto_the_last_padded_node(batch):
    model = tiny_model()
    graph = model.build_graph(batch)
    capacities = roomy_capacities(model, batch)
    static = PaddedQCNetBatch(batch, capacities, STEPS, MODES)
    sizes = static.fill(batch, graph)
    num_agents, agent_cap = sizes['agent'], capacities['agent']
    # step-major agent indices are remapped to the padded agent count, the others are unchanged
    src, dst = graph['a2a']
    assert torch.equal(static.edge_lists['a2a'][1, :sizes['a2a']], (dst // num_agents) * agent_cap + dst % num_agents)
    assert torch.equal(static.edge_lists['t'][:, :sizes['t']], graph['t'])
    for name, (src_layout, dst_layout) in QCNET_EDGE_LAYOUTS.items():
        padding = static.edge_lists[name][:, sizes[name]:]
        assert padding.size(1) == capacities[name] - sizes[name] > 0
        assert (padding == padding[:, :1]).all(), name
    # padded agents: nothing valid, nothing to predict
    assert not static.data['agent']['valid_mask'][num_agents:].any()
    assert not static.data['agent']['predict_mask'][num_agents:].any()
    # a smaller batch afterwards leaves no stale rows behind
    single = Batch.from_data_list([batch.get_example(0)])
    small = static.fill(single, model.build_graph(single))
    assert not static.data['agent']['valid_mask'][small['agent']:].any()
    assert (static.data['map_point']['position'][small['map_point']:] == 0).all()


def test_static_batch_refuses_a_batch_that_does_not_fit(batch):
    model = tiny_model()
    graph = model.build_graph(batch)
    sizes = graph_sizes(batch, graph)
    static = PaddedQCNetBatch(batch, {**required_capacities(sizes), 'pl2a': sizes['pl2a']}, STEPS, MODES)
    with pytest.raises(ValueError, match='exceed the capacities'):
        static.fill(batch, graph)


def test_capacity_ladder():
    ladder = CapacityLadder(growth=1.25)
    reference = {'agent': 100, 'pl2a': 5000}
    ladder.rung(reference)  # the first batch sets the reference sizes
    assert ladder.capacities(0) == {'agent': 128, 'pl2a': 5024}  # rung 0: the reference rounded up to 32 rows
    for sizes in ({'agent': 100, 'pl2a': 5000}, {'agent': 130, 'pl2a': 5000}, {'agent': 60, 'pl2a': 9000},
                  {'agent': 10, 'pl2a': 100}):
        rung = ladder.rung(sizes)
        capacities = ladder.capacities(rung)
        assert all(capacities[k] > sizes[k] for k in sizes), (sizes, capacities)
        assert all(v % 32 == 0 for v in capacities.values())
        if rung > ladder.rung({k: 1 for k in sizes}):
            smaller = ladder.capacities(rung - 1)
            assert any(smaller[k] <= sizes[k] for k in sizes), 'a lower rung would have held the batch'
    with pytest.raises(ValueError):
        CapacityLadder(growth=1.0)


def test_cuda_graphs_flag_trains_with_manual_optimisation_on_cpu(batch, tmp_path):
    """--cuda_graphs switches the module to its own backward + optimiser step; on CPU the padded step runs without
    capture. Same first-step loss as the automatic path; parameters move; the cosine schedule steps per epoch."""
    scenes = [batch.get_example(i) for i in range(batch.num_graphs)]

    def fit(cuda_graphs):
        return fit_two_epochs(tiny_model(dropout=0.0, T_max=4), scenes, tmp_path, cuda_graphs)

    model, recorded, moved, trainer = fit(True)
    assert not model.automatic_optimization
    assert trainer.global_step == 2 and moved > 0
    assert recorded[1][1] < recorded[0][1]  # the learning rate decayed after the first epoch
    _, reference, _, _ = fit(False)
    assert abs(recorded[0][0] - reference[0][0]) < 1e-5 * max(1.0, abs(reference[0][0]))
    assert abs(recorded[1][0] - reference[1][0]) < 1e-4 * max(1.0, abs(reference[1][0]))


def test_cuda_graphs_flag_without_a_gpu_is_a_one_line_error(tmp_path):
    import train
    from utils.cli import CliError
    flags = ['--root', str(tmp_path), '--train_batch_size', '2', '--val_batch_size', '2', '--test_batch_size', '2',
             '--dataset', 'argoverse_v2', '--num_historical_steps', '50', '--num_future_steps', '60',
             '--num_recurrent_steps', '3', '--pl2pl_radius', '150', '--pl2a_radius', '50', '--a2a_radius', '50',
             '--pl2m_radius', '150', '--a2m_radius', '150', '--log_dir', str(tmp_path / 'logs'), '--cuda_graphs']
    with pytest.raises(CliError, match='--cuda_graphs: needs a CUDA GPU'):
        train.main(flags + ['--accelerator', 'cpu'])
    with pytest.raises(CliError, match='not available together with --checkpoint_agent_encoder'):
        train.main(flags + ['--accelerator', 'cpu', '--checkpoint_agent_encoder'])
    # The compile flags are allowed with it (run on the GPU in docs/BENCHMARKS.md): here only the missing GPU is.
    with pytest.raises(CliError, match='--cuda_graphs: needs a CUDA GPU'):
        train.main(flags + ['--accelerator', 'cpu', '--compile_attention', '--compile_embeddings', '--compile_gru'])
    with pytest.raises(CliError, match='--compile_embeddings and --recompute_embeddings exclude each other'):
        train.main(flags + ['--accelerator', 'cpu', '--compile_embeddings', '--recompute_embeddings'])
    import val
    with pytest.raises(CliError, match='--cuda_graphs: needs a CUDA GPU'):
        checkpoint = tmp_path / 'model.ckpt'
        model = tiny_model()
        torch.save({'state_dict': model.state_dict(), 'hyper_parameters': dict(model.hparams),
                    'pytorch-lightning_version': '2.6.0'}, checkpoint)
        val.main(['--root', str(tmp_path), '--ckpt_path', str(checkpoint), '--accelerator', 'cpu', '--speed', 'fast'])


def test_runner_drops_its_graphs_when_the_parameters_move(batch):
    """Lightning moves a module to the CPU after fit/validate and back at the next call: new parameter memory that
    a captured graph would not see. The runner notices and starts over (on CPU: its padded buffers)."""
    model = tiny_model().eval()
    runner = CudaGraphStep(model, QCNetPadding(model), capture=False).inference_runner
    first = runner(batch)
    entries = dict(runner._entries)
    runner(batch)
    assert runner._entries == entries  # same weights: kept
    model.to(torch.float64).to(torch.float32)  # new parameter storage, same values
    again = runner(batch)
    assert runner._entries.keys() == entries.keys()
    assert all(runner._entries[k] is not entries[k] for k in entries)
    for name, value in first.items():
        assert torch.equal(again[name], value)
