"""Parameters and MACs of CARE models beside the paper's figures (Tables 2-5)."""
import functools
from typing import Dict, List, Optional, Tuple

import timm
import torch.nn as nn

from ..models.complexity import count_macs, count_params

# Paper figures: Table 5 (params incl. distillation head, GMACs at 224) and Table 2
# (backbone GMACs at 512x512, forward_features only).
PAPER_FIGURES = {
    'care_s0': dict(params_m=7.34, gmacs=0.72, backbone_gmacs_512=3.8),
    'care_s1': dict(params_m=9.60, gmacs=1.03, backbone_gmacs_512=5.4),
    'care_s2': dict(params_m=19.48, gmacs=1.93, backbone_gmacs_512=10.1),
}

# The ablation tables' rows with the figures as printed: (table, model, params M, GMACs at 224,
# decimals printed). Table 3 is on CARE-S2 (its 'w/ Asym' row is care_s2), Table 4 on CARE-S0.
ABLATION_ROWS = (
    ('Table 3', 'care_s2_sym', 19.7, 2.0, 1),
    ('Table 3', 'care_s2_stacked', 20.9, 2.1, 1),
    ('Table 3', 'care_s2_no_local', 20.7, 2.0, 1),
    ('Table 3', 'care_s2', 19.5, 1.9, 1),
    ('Table 4', 'care_s0_no_inter1', 5.5, 0.5, 1),
    ('Table 4', 'care_s0_no_inter2', 2.7, 0.3, 1),
    ('Table 4', 'care_s0_no_memory', 5.4, 0.5, 1),
    ('Table 4', 'care_s0', 7.3, 0.7, 1),
    ('Table 5', 'care_s0', 7.34, 0.72, 2),
    ('Table 5', 'care_s0_early_attn', 7.34, 0.72, 2),
    ('Table 5', 'care_s0_single_local', 7.32, 0.71, 2),
    ('Table 5', 'care_s1', 9.60, 1.03, 2),
    ('Table 5', 'care_s1_early_attn', 9.60, 1.03, 2),
    ('Table 5', 'care_s1_single_local', 9.57, 1.02, 2),
    ('Table 5', 'care_s2', 19.48, 1.93, 2),
    ('Table 5', 'care_s2_early_attn', 19.48, 1.93, 2),
    ('Table 5', 'care_s2_single_local', 19.43, 1.92, 2),
)


def profile_model(name: str, img_size: int = 224, backbone_img_size: int = 512,
                  model: Optional[nn.Module] = None) -> Dict[str, object]:
    """Params and GMACs of `name` (classifier at `img_size`, backbone at `backbone_img_size`)."""
    model = model if model is not None else timm.create_model(name)
    row = dict(
        model=name,
        params_m=count_params(model) / 1e6,
        img_size=img_size,
        gmacs=count_macs(model, img_size) / 1e9,
        backbone_img_size=backbone_img_size,
        backbone_gmacs=count_macs(model, backbone_img_size, features_only=True) / 1e9,
    )
    paper = PAPER_FIGURES.get(name)
    if paper is not None:
        row['paper'] = dict(paper)
    return row


@functools.lru_cache(maxsize=None)
def _params_and_gmacs(name: str, img_size: int = 224) -> Tuple[float, float]:
    """Params (M) and GMACs of a freshly built `name`, counted once per process (fvcore traces are slow)."""
    model = timm.create_model(name)
    return count_params(model) / 1e6, count_macs(model, img_size) / 1e9


def _as_printed(value: float, digits: int) -> str:
    return f'{value:.{digits}f}'


def profile_ablations() -> List[Dict[str, object]]:
    """Every row of the ablation tables: our params and GMACs at 224x224 beside the paper's, and
    whether they agree at the paper's printed precision. Each model is counted once."""
    from ..models.care import ABLATIONS

    rows = []
    for table, name, paper_params, paper_gmacs, digits in ABLATION_ROWS:
        params_m, gmacs = _params_and_gmacs(name)
        rows.append(dict(
            table=table, model=name, options=ABLATIONS.get(name, (name, {}))[1],
            params_m=params_m, gmacs=gmacs, paper_params_m=paper_params, paper_gmacs=paper_gmacs, digits=digits,
            matches=_as_printed(params_m, digits) == _as_printed(paper_params, digits)
            and _as_printed(gmacs, digits) == _as_printed(paper_gmacs, digits),
        ))
    return rows
