"""Predictor names the scripts accept, without importing the models (argparse runs before torch is imported).

Every script accepts a model under its predictor name or its SmartPretrain backbone name, in any case and with or
without '_' / '-' ('QCNet' = 'qcnet'; 'ForecastMAE' = 'forecast_mae' = 'forecast-mae').
"""
from typing import Dict, List

# predictor name (hyper-parameter ``model`` of its checkpoints) -> SmartPretrain backbone whose weights it takes
PREDICTOR_BACKBONES: Dict[str, str] = {'QCNet': 'qcnet', 'ForecastMAE': 'forecast_mae'}
AUTO = 'auto'


def normalise_model_name(name: str) -> str:
    """'ForecastMAE', 'forecast_mae', 'forecast-mae' -> 'forecastmae' (comparison key of model names)."""
    return str(name).replace('_', '').replace('-', '').lower()


def model_names() -> List[str]:
    """Predictor names, e.g. for argparse help."""
    return list(PREDICTOR_BACKBONES)


def resolve_model_name(name: str) -> str:
    """Predictor name of ``name`` (a predictor or backbone name, see the module docstring)."""
    key = normalise_model_name(name)
    for model_name, backbone in PREDICTOR_BACKBONES.items():
        if key in (normalise_model_name(model_name), normalise_model_name(backbone)):
            return model_name
    raise ValueError(f'unknown model {name!r}; available: {", ".join(PREDICTOR_BACKBONES)} (or their backbone names '
                     f'{", ".join(PREDICTOR_BACKBONES.values())})')


def backbone_name(name: str) -> str:
    """SmartPretrain backbone of a model given by any of its names; names of other registered backbones
    (``modules.backbone``) are returned unchanged."""
    try:
        return PREDICTOR_BACKBONES[resolve_model_name(name)]
    except ValueError:
        return name
