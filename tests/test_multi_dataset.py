"""Mixed multi-dataset pre-training: union vocabularies, the mixed dataset and its sampler, per-dataset view
validity, a few pre-training steps on Argoverse 2 + Argoverse 1 + Waymo (CPU, tiny model) and fine-tuning transfer."""
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.argoverse_v1 import load_argoverse_v1_scenario
from datasets.multi_dataset import MultiDataset, WeightedDatasetSampler, dataset_ids_of_agents
from datasets.processing import process_scenario
from datasets.scenario import (AGENT_TYPES, AV2_NUM_AGENT_TYPES, AV2_NUM_POINT_TYPES, AV2_NUM_POLYGON_TYPES,
                               POINT_TYPES, POLYGON_TYPES)
from datasets.synthetic.av1 import generate_argoverse_v1
from transforms.ssl_views import SSLViews

from tiny_configs import TINY_QCNET_SSL, as_flags
from sample_data import AV2_TRAIN_DIR, WOMD_FILE

ROOT = Path(__file__).resolve().parents[1]
AV2_TRAIN = AV2_TRAIN_DIR
WOMD = WOMD_FILE


def test_union_vocabularies_keep_argoverse2_first():
    # official QCNet Argoverse 2 orders (the indices of its checkpoints)
    assert POLYGON_TYPES[:AV2_NUM_POLYGON_TYPES] == ('VEHICLE', 'BIKE', 'BUS', 'PEDESTRIAN')
    assert POINT_TYPES[:AV2_NUM_POINT_TYPES] == (
        'DASH_SOLID_YELLOW', 'DASH_SOLID_WHITE', 'DASHED_WHITE', 'DASHED_YELLOW', 'DOUBLE_SOLID_YELLOW',
        'DOUBLE_SOLID_WHITE', 'DOUBLE_DASH_YELLOW', 'DOUBLE_DASH_WHITE', 'SOLID_YELLOW', 'SOLID_WHITE',
        'SOLID_DASH_WHITE', 'SOLID_DASH_YELLOW', 'SOLID_BLUE', 'NONE', 'UNKNOWN', 'CROSSWALK', 'CENTERLINE')
    assert len(AGENT_TYPES) == AV2_NUM_AGENT_TYPES
    assert len(set(POINT_TYPES)) == len(POINT_TYPES) and len(set(POLYGON_TYPES)) == len(POLYGON_TYPES)
    # the embedding tables of both backbones take their sizes from these vocabularies: the official QCNet sizes
    from modules.forecast_mae_encoder import ForecastMAEEncoder
    from modules.qcnet_agent_encoder import QCNetAgentEncoder
    from modules.qcnet_map_encoder import QCNetMapEncoder
    agent = QCNetAgentEncoder('argoverse_v2', 3, 8, 50, 10, 50.0, 50.0, 2, 1, 1, 8, 0.0)
    qcnet_map = QCNetMapEncoder('argoverse_v2', 3, 8, 50, 150.0, 2, 1, 1, 8, 0.0)
    assert agent.type_a_emb.num_embeddings == 10
    official = {'type_pt_emb': 17, 'side_pt_emb': 3, 'type_pl_emb': 4, 'int_pl_emb': 3, 'type_pl2pl_emb': 5}
    assert {name: getattr(qcnet_map, name).num_embeddings for name in official} == official
    union = QCNetMapEncoder('argoverse_v2', 3, 8, 50, 150.0, 2, 1, 1, 8, 0.0, num_point_types=len(POINT_TYPES),
                            num_polygon_types=len(POLYGON_TYPES))
    assert (union.type_pt_emb.num_embeddings, union.type_pl_emb.num_embeddings) == (23, 9)
    mae = ForecastMAEEncoder(2, 8, 50, 2, 1, 8, 0.0)
    mae_tables = {'agent_embedding.type_emb': 10, 'lane_embedding.type_pt_emb': 17, 'lane_embedding.side_pt_emb': 3,
                  'lane_embedding.type_pl_emb': 4, 'lane_embedding.int_pl_emb': 3}
    assert {name: mae.get_submodule(name).num_embeddings for name in mae_tables} == mae_tables


class Items(torch.utils.data.Dataset):
    def __init__(self, tag, size):
        self.tag, self.size = tag, size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return self.tag, index


def test_multi_dataset_and_sampler():
    mix = MultiDataset({'a': Items('a', 3), 'b': Items('b', 5)})
    assert len(mix) == 8 and mix[0] == ('a', 0) and mix[3] == ('b', 0) and mix[-1] == ('b', 4)
    assert mix.dataset_index().tolist() == [0] * 3 + [1] * 5
    with pytest.raises(IndexError):
        mix[8]
    plain = WeightedDatasetSampler(mix, seed=1)
    assert sorted(plain) == list(range(8)) and list(plain) == list(WeightedDatasetSampler(mix, seed=1))
    plain.set_epoch(1)
    first = list(plain)
    plain.set_epoch(2)
    assert first != list(plain)  # new order every epoch
    only_b = WeightedDatasetSampler(mix, weights=[0, 1], num_samples=12, seed=0)
    drawn = list(only_b)
    assert len(drawn) == 12 and all(3 <= i < 8 for i in drawn)
    counts = Counter(drawn)  # each round draws every item of the dataset once
    assert set(counts) == set(range(3, 8)) and max(counts.values()) - min(counts.values()) <= 1
    weighted = list(WeightedDatasetSampler(mix, weights=[3, 1], num_samples=4000, seed=0))
    share_a = np.mean(np.array(weighted) < 3)
    assert abs(share_a - 0.75) < 0.03
    with pytest.raises(ValueError, match='2 datasets'):
        WeightedDatasetSampler(mix, weights=[1])


def test_per_dataset_negatives_partition_the_contrastive_loss():
    from losses.contrastive_loss import ContrastiveLoss
    torch.manual_seed(0)
    num, steps, dim = 7, 3, 8
    queries, keys = torch.randn(num, steps, dim), torch.randn(2 * num, steps, dim)
    query_mask, key_mask = torch.ones(num, dtype=torch.bool), torch.ones(2 * num, dtype=torch.bool)
    agents = torch.arange(num)
    group = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    loss = ContrastiveLoss(0.07)
    grouped = loss(queries, query_mask, keys, key_mask, agents + num, agents, query_group=group,
                   key_group=torch.cat([group, group]))
    # = the query-weighted mean of the losses of each dataset on its own (keys of other datasets never compete)
    parts = []
    for g in range(3):
        rows = group == g
        n = int(rows.sum())
        parts.append(n * loss(queries[rows], query_mask[rows], torch.cat([keys[:num][rows], keys[num:][rows]]),
                              key_mask[:2 * n], torch.arange(n) + n, torch.arange(n)).loss)
    torch.testing.assert_close(grouped.loss, sum(parts) / num)
    one_group = torch.zeros(num, dtype=torch.long)
    torch.testing.assert_close(loss(queries, query_mask, keys, key_mask, agents + num, agents, query_group=one_group,
                                    key_group=torch.cat([one_group, one_group])).loss,
                               loss(queries, query_mask, keys, key_mask, agents + num, agents).loss)


@pytest.fixture(scope='module')
def av1_sample(tmp_path_factory):
    out = tmp_path_factory.mktemp('av1')
    csv_dir, _ = generate_argoverse_v1(out, num_sequences=2, num_others=10, seed=5)
    return process_scenario(load_argoverse_v1_scenario(csv_dir / '510000'))


def test_views_follow_the_official_per_dataset_masks(av1_sample):
    """Argoverse 1 covers canvas steps 30..79: the official rules are observed over [30, start + 50) for the
    anchor and over [start, 80) for the target (predict_mask_ssl, whose future is cleared for agents unseen at 49)."""
    views = SSLViews(50, 60)
    observed_ssl = av1_sample['agent']['predict_mask_ssl']
    for anchor_start, target_start in ((0, 50), (4, 57), (10, 60)):
        out = views.make_views(av1_sample, anchor_start, target_start)
        anchor_official = observed_ssl[:, 30:anchor_start + 50].sum(-1) == 20 + anchor_start
        target_official = observed_ssl[:, target_start:target_start + 50].sum(-1) == 80 - target_start
        assert torch.equal(out['anchor']['agent']['view_mask'], anchor_official)
        assert torch.equal(out['target']['agent']['view_mask'], target_official)
        assert out['anchor']['agent']['view_mask'].any() and out['target']['agent']['view_mask'].any()
        # agents embedded in the target view: valid at its last recorded step (79), not at the empty window end
        target_agent = out['target']['agent']
        assert torch.equal(target_agent['predict_mask'].any(-1), target_agent['valid_mask'][:, 79 - target_start])


@pytest.mark.skipif(not WOMD.is_file(), reason=f'real Waymo sample absent ({WOMD})')
def test_waymo_views_follow_the_official_mask():
    """Official Waymo rule (shift ``waymo_start``): anchor agents observed from canvas step 39 - waymo_start to the
    window end; target agents over the whole window."""
    from datasets.waymo import load_waymo_scenario
    record = load_waymo_scenario(str(WOMD) + '#000000')
    waymo_start = record.extras['waymo_shift']
    sample = process_scenario(record)
    observed_ssl = sample['agent']['predict_mask_ssl']
    for anchor_start, target_start in ((0, 50), (7, 60)):
        out = SSLViews(50, 60).make_views(sample, anchor_start, target_start)
        first = 39 - waymo_start
        anchor_official = observed_ssl[:, first:anchor_start + 50].sum(-1) == waymo_start + 11 + anchor_start
        target_official = observed_ssl[:, target_start:target_start + 50].sum(-1) == 50
        assert torch.equal(out['anchor']['agent']['view_mask'], anchor_official)
        assert torch.equal(out['target']['agent']['view_mask'], target_official)
        assert int(out['anchor']['agent']['query_mask'].sum()) > 10


def test_sampler_draw_follows_the_epoch_function():
    mix = MultiDataset({'a': Items('a', 4), 'b': Items('b', 4)})
    epoch = [0]
    sampler = WeightedDatasetSampler(mix, weights=[1, 1], num_samples=8, seed=0, epoch_fn=lambda: epoch[0])
    first = list(sampler)
    sampler.set_epoch(5)  # ignored: the epoch function wins (Lightning only tells its DDP wrapper)
    assert list(sampler) == first
    epoch[0] = 1
    assert list(sampler) != first


@pytest.mark.skipif(not AV2_TRAIN.is_dir(), reason=f'real AV2 samples absent ({AV2_TRAIN})')
def test_datamodule_mixes_labelled_sources(tmp_path, av1_sample):
    from datasets.multi_dataset import DatasetSource, MultiDatasetDataModule
    sources = [DatasetSource('argoverse_v2', str(tmp_path), raw_dirs={'train': str(AV2_TRAIN)},
                             processed_dirs={'train': str(tmp_path / p)}, weight=w, label=label)
               for label, p, w in (('urban', 'a', 1.0), ('highway', 'b', 3.0))]
    module = MultiDatasetDataModule(sources, train_batch_size=2, val_batch_size=2, num_samples_per_epoch=8,
                                    dataset_kwargs={'num_workers': 1, 'progress': False})
    module.prepare_data()
    module.setup('fit')
    assert module.train_dataset.names == ['urban', 'highway'] and module.val_dataset is None
    batches = list(module.train_dataloader())
    assert len(batches) == 4 and all(batch['data_set'].tolist() == [1, 1] for batch in batches)
    with pytest.raises(ValueError, match='own label'):
        MultiDatasetDataModule(sources[:1] * 2, 2, 2)
    with pytest.raises(ValueError, match='for every dataset'):
        MultiDatasetDataModule([sources[0], DatasetSource('waymo', str(tmp_path))], 2, 2)


def test_both_data_modules_tell_the_view_transform_the_epoch_before_the_training_loader(tmp_path):
    """Pre-training passes ``on_train_loader`` to either data module: the first loader of a resumed run (epoch 3
    here, before any epoch hook) already draws that epoch's views."""
    from types import SimpleNamespace

    from datasets import ArgoverseV2DataModule
    from datasets.multi_dataset import DatasetSource, MultiDatasetDataModule
    from predictors.smartpretrain import ViewEpochCallback
    dataset_kwargs = {'num_workers': 1, 'progress': False}
    reference = SSLViews(50, 60, seed=7)
    reference.set_epoch(3)
    av2_dirs = {f'{split}_{kind}_dir': str(AV2_TRAIN) if kind == 'raw' else str(tmp_path / 'av2')
                for split in ('train', 'val') for kind in ('raw', 'processed')}
    first_scene = ArgoverseV2DataModule(str(tmp_path), 1, 1, 1, train_transform=None, dataset_kwargs=dataset_kwargs,
                                        **av2_dirs)
    first_scene.setup('fit')
    expected = reference(first_scene.train_dataset[0])
    epoch_0 = SSLViews(50, 60, seed=7)(first_scene.train_dataset[0])
    assert not torch.equal(epoch_0['anchor']['agent']['position'], expected['anchor']['agent']['position'])
    modules = {
        'argoverse_v2': lambda views, hook: ArgoverseV2DataModule(
            str(tmp_path), 1, 1, 1, shuffle=False, num_workers=0, train_transform=views, dataset_kwargs=dataset_kwargs,
            on_train_loader=hook, **av2_dirs),
        'mix': lambda views, hook: MultiDatasetDataModule(
            [DatasetSource('argoverse_v2', str(tmp_path), raw_dirs={'train': str(AV2_TRAIN)},
                           processed_dirs={'train': str(tmp_path / 'av2')})], 1, 1, shuffle=False,
            train_transform=views, dataset_kwargs=dataset_kwargs, on_train_loader=hook)}
    for name, make in modules.items():
        views = SSLViews(50, 60, seed=7)
        module = make(views, ViewEpochCallback(views).sync)
        module.trainer = SimpleNamespace(current_epoch=3)
        module.setup('fit')
        assert views.epoch == 0
        batch = next(iter(module.train_dataloader()))
        assert views.epoch == 3, name
        for key in ('anchor', 'target'):
            torch.testing.assert_close(batch[key]['agent']['position'], expected[key]['agent']['position'])


def test_rootless_source_keeps_processed_files_next_to_the_raw_dir(tmp_path, monkeypatch):
    from datasets.multi_dataset import DatasetSource
    csv_dir, _ = generate_argoverse_v1(tmp_path / 'av1', num_sequences=2, seed=2)
    work = tmp_path / 'cwd'
    work.mkdir()
    monkeypatch.chdir(work)
    source = DatasetSource('argoverse_v1', None, raw_dirs={'train': str(csv_dir)})
    assert source.directories('train') == (str(csv_dir), str(csv_dir) + '_processed')
    assert source.split_exists('train') and not source.split_exists('val')
    dataset = source.build('train', None, num_workers=1, progress=False)
    assert len(dataset) == 2 and len(list((tmp_path / 'av1' / 'train' / 'data_processed').glob('*.qcs'))) == 2
    assert list(work.iterdir()) == []  # nothing written relative to the working directory


def test_dataset_ids_of_agents(av1_sample):
    from torch_geometric.data import Batch
    batch = Batch.from_data_list([av1_sample, av1_sample])
    ids = dataset_ids_of_agents(batch)
    assert ids.shape == (batch['agent']['num_nodes'],) and (ids == 0).all()


@pytest.mark.skipif(not AV2_TRAIN.is_dir() or not WOMD.is_file(), reason='real AV2 / Waymo samples absent')
def test_mixed_pretraining_then_av2_finetuning_transfer(tmp_path, capsys):
    import train_ssl
    from predictors.qcnet import QCNet
    from predictors.smartpretrain import SmartPretrain
    from utils.pretrained import load_pretrained_into_qcnet

    generate_argoverse_v1(tmp_path / 'av1', num_sequences=3, split='train', seed=1)
    waymo_raw = tmp_path / 'waymo' / 'train' / 'raw'
    waymo_raw.mkdir(parents=True)
    (waymo_raw / 'part.tfrecord-00000-of-00001').symlink_to(WOMD.resolve())
    args = ['--root', tmp_path, '--train_raw_dir', AV2_TRAIN, '--val_raw_dir', AV2_TRAIN,
            '--train_processed_dir', tmp_path / 'av2', '--val_processed_dir', tmp_path / 'av2',
            '--load_av1', 1, '--load_waymo', 1, '--av1_train_raw_dir', tmp_path / 'av1' / 'train' / 'data',
            '--av1_train_processed_dir', tmp_path / 'av1_processed', '--waymo_root', tmp_path / 'waymo',
            '--dataset_weights', 1, 1, 1, '--num_samples_per_epoch', 3, '--limit_val_batches', 1,
            '--separate_dataset_negatives', 1,
            '--train_batch_size', 3, '--val_batch_size', 2, '--num_workers', 0, '--log_dir', tmp_path / 'logs',
            '--exp_name', 'mix', '--warmup', 1, '--accelerator', 'cpu', '--log_every_n_steps', 1, '--max_epochs', 1]
    args += as_flags(TINY_QCNET_SSL)
    trainer = train_ssl.main([str(a) for a in args])
    assert trainer.global_step == 1  # 3 drawn scenarios, a batch of 3
    loss = trainer.callback_metrics['loss_epoch']
    assert torch.isfinite(loss)
    checkpoint = tmp_path / 'logs' / 'mix' / 'checkpoints' / 'last.ckpt'
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)['state_dict']
    table = state['momentum_branch.encoder.map_encoder.type_pt_emb.weight']
    assert table.shape[0] == len(POINT_TYPES)
    assert state['branch.encoder.map_encoder.type_pl_emb.weight'].shape[0] == len(POLYGON_TYPES)

    # fine-tuning on Argoverse 2: the union tables are cut to Argoverse 2's leading rows
    model = QCNet(**dict(SmartPretrain(**TINY_QCNET_SSL).hparams, num_modes=6))
    report = load_pretrained_into_qcnet(model, str(checkpoint), copy_refine=True, verbose=False)
    assert any('type_pt_emb' in note and f'from {len(POINT_TYPES)} to {AV2_NUM_POINT_TYPES}' in note
               for note in report.adapted)
    torch.testing.assert_close(model.encoder.map_encoder.type_pt_emb.weight, table[:AV2_NUM_POINT_TYPES])

    # the mix flags fail clearly without the other dataset's data
    with pytest.raises(SystemExit, match='--dataset_weights needs 3 values'):
        train_ssl.main([str(a) for a in args] + ['--dataset_weights', '1', '1'])
