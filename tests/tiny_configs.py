"""Tiny model configurations shared by the tests (hidden_dim 16, one layer each): keyword arguments for the models and,
through as_flags, the same values spelled as train.py / train_ssl.py flags. Tests that need other values derive
their own dict from these with `{**TINY_..., 'key': value}`."""

# Argoverse 2 time steps: 50 history + 60 future at 10 Hz, the future decoded in 3 recurrent steps
AV2_STEPS = dict(num_historical_steps=50, num_future_steps=60, num_recurrent_steps=3)

# widths and layer counts of the QCNet backbone (QCNet or SmartPretrain), radii left at the model's defaults
TINY_QCNET_SIZES = dict(hidden_dim=16, num_freq_bands=4, num_heads=2, head_dim=8, num_map_layers=1, num_agent_layers=1,
                        num_dec_layers=1)

# SmartPretrain on cropped real scenes: short radii keep a step well under a second on two CPU cores
TINY_QCNET_SSL = {**TINY_QCNET_SIZES, 'pl2pl_radius': 20, 'pl2a_radius': 15, 'a2a_radius': 15, 'pl2m_radius': 20,
                  'a2m_radius': 20, 'time_span': 3, 'num_t2m_steps': 10}

# end-to-end script runs (train.py, train_ssl.py) on synthetic scenes
TINY_QCNET_SYNTHETIC = {**TINY_QCNET_SIZES, 'pl2pl_radius': 30.0, 'time_span': 5, 'pl2a_radius': 20.0,
                        'a2a_radius': 20.0, 'num_t2m_steps': 10, 'pl2m_radius': 30.0, 'a2m_radius': 30.0}

# every constructor argument of the QCNet predictor (3 modes, 40 m map / 25 m agent radii)
TINY_QCNET = dict(dataset='argoverse_v2', input_dim=2, output_dim=2, output_head=False, num_modes=3, **AV2_STEPS,
                  **TINY_QCNET_SIZES, dropout=0.1, pl2pl_radius=40.0, time_span=10, pl2a_radius=25.0,
                  a2a_radius=25.0, num_t2m_steps=30, pl2m_radius=40.0, a2m_radius=40.0, lr=5e-4, weight_decay=1e-4,
                  T_max=64, submission_dir='./', submission_file_name='submission')

# the ForecastMAE backbone's widths and layer counts
TINY_FMAE = dict(hidden_dim=16, num_freq_bands=4, num_heads=2, head_dim=8, num_dec_layers=1, num_temporal_layers=1,
                 num_scene_layers=1)


def as_flags(config: dict) -> list:
    """['--key', 'value', ...] for the scripts' argparse, in the dict's order."""
    return [item for key, value in config.items() for item in (f'--{key}', str(value))]
