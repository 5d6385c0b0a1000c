"""The paper's ablation variants (Tables 3-5): options, figures as printed, and every tool on each variant."""
import copy
import json
import warnings

import pytest
import timm
import torch

import caretrans
from caretrans.bench import profile
from caretrans.bench.profile import ABLATION_ROWS
from caretrans.cli import main as cli_main
from caretrans.export import export_model
from caretrans.models.care import ABLATIONS, LinearAttention, StackedMixer, default_head_dims
from caretrans.models.complexity import count_macs, count_params
from caretrans.train.recipe import Recipe
from caretrans.train.trainer import train
from test_reparam import _max_diff, _randomised
from test_train import TINY

pytestmark = pytest.mark.usefixtures('one_thread')

# One model per option value, shallow (one or two blocks a stage) so that each test takes seconds.
SHALLOW = dict(depths=(1, 1, 1, 2))
OPTION_VARIANTS = ['care_s2_sym', 'care_s2_stacked', 'care_s2_no_local', 'care_s0_no_inter1', 'care_s0_no_inter2',
                   'care_s0_no_memory', 'care_s0_early_attn', 'care_s0_single_local']


def _figures_of(name):
    return [(table, params, gmacs, digits) for table, row_name, params, gmacs, digits in ABLATION_ROWS
            if row_name == name]


# ---------------------------------------------------------------- the paper's figures

@pytest.mark.parametrize('name', sorted({name for _, name, *_ in ABLATION_ROWS}))
def test_params_and_macs_equal_the_paper_as_printed(name):
    model = timm.create_model(name)
    params_m, gmacs = count_params(model) / 1e6, count_macs(model, 224) / 1e9
    for table, paper_params, paper_gmacs, digits in _figures_of(name):
        assert f'{params_m:.{digits}f}' == f'{paper_params:.{digits}f}', f'{table} {name}: params {params_m:.4f} M'
        assert f'{gmacs:.{digits}f}' == f'{paper_gmacs:.{digits}f}', f'{table} {name}: {gmacs:.4f} GMACs'


def test_every_ablation_row_is_a_registered_model():
    assert {name for _, name, *_ in ABLATION_ROWS} == set(ABLATIONS) | {'care_s0', 'care_s1', 'care_s2'}
    assert set(ABLATIONS) <= set(timm.list_models('care_*'))


# ---------------------------------------------------------------- structure of each reading

def test_released_structure_is_the_default():
    explicit = timm.create_model('care_s0', decoupling='asym', inter1=True, inter2=True, memory=True, early='conv',
                                 local='multiscale')
    released = timm.create_model('care_s0')
    assert [(k, v.shape) for k, v in explicit.state_dict().items()] == \
        [(k, v.shape) for k, v in released.state_dict().items()]


def test_each_variant_builds_what_docs_architecture_describes():
    def block(name, stage=2, **kwargs):
        return timm.create_model(name, **SHALLOW, **kwargs).stages[stage].blocks[0]

    sym = block('care_s2_sym').token_mixer  # d = 144: 72 global (one head), 36 + 36 local
    assert sym.widths == [72, 36, 36] and sym.global_mixer.num_heads == 1
    assert block('care_s0', decoupling='sym').token_mixer.global_mixer.head_dim == 16  # 48 channels: 3 heads
    stacked = block('care_s2_stacked').token_mixer
    assert isinstance(stacked, StackedMixer) and stacked.global_mixer.num_heads == 9  # 144 channels, heads of 16
    assert stacked.local_in.widths == stacked.local_out.widths == [72, 72]
    no_local = block('care_s2_no_local').token_mixer
    assert no_local.widths == [144] and no_local.local3 is None and no_local.local7 is None
    assert block('care_s0_no_inter1').inter1 is None
    assert block('care_s0_single_local').token_mixer.local3.in_channels == 64
    assert block('care_s0_single_local').token_mixer.local7 is None
    early = block('care_s0_early_attn', stage=0).token_mixer.global_mixer
    assert isinstance(early, LinearAttention) and (early.num_heads, early.head_dim) == (2, 4)
    assert default_head_dims((24, 48, 144, 288), 'sym') == [4, 8, 72, 144]  # 12 and 24 channels in stages 1-2
    # Without memory there are d channels between blocks; without Inter2 the memory is still carried.
    no_memory = timm.create_model('care_s0_no_memory')
    assert [f['num_chs'] for f in no_memory.feature_info] == [24, 48, 96, 768]
    no_inter2 = timm.create_model('care_s0_no_inter2')
    assert [f['num_chs'] for f in no_inter2.feature_info] == [32, 64, 128, 256]
    assert no_inter2.stages[3].blocks[-1].layer_scale is not None


@pytest.mark.parametrize('kwargs,match', [
    (dict(decoupling='symmetric'), "decoupling must be one of 'asym', 'sym', 'stacked', 'no_local'"),
    (dict(early='attn'), "early must be one of 'conv', 'attention'"),
    (dict(local='3x3'), "local must be one of 'multiscale', 'single'"),
    (dict(memory='no'), 'memory must be True or False'),
    (dict(decoupling='no_local', local='single'), "decoupling='no_local' has no local convs"),
    (dict(decoupling='sym', dims=(30, 48, 96, 192)), "cannot split 30 feature channels"),
    (dict(decoupling='sym', head_dims=(4, 8, 16, 32), dims=(24, 48, 144, 288)), 'attention width 72 is not a multiple'),
])
def test_bad_options_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('care_s0', **kwargs)


# ---------------------------------------------------------------- every tool on every variant

@pytest.mark.parametrize('name', OPTION_VARIANTS)
def test_variant_learns_fuses_exactly_and_exports(name, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, drop_path_rate=0.1, **SHALLOW).train()
    model.set_distilled_training(True)
    out, out_dist = model(torch.randn(2, 3, 64, 64))
    (out.logsumexp(1).mean() + out_dist.logsumexp(1).mean()).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n

    model = _randomised(name, num_classes=10, **SHALLOW)
    fused = caretrans.reparameterize(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    for size in [(64, 64), (33, 47)]:
        assert _max_diff(model, fused, torch.randn(2, 3, *size)) < 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        report = export_model(fused, 'onnx', tmp_path / 'm.onnx', img_size=64)
    assert max(report['max_abs_diff'].values()) < 1e-4  # ONNX Runtime agrees with PyTorch

    backbone = timm.create_model(name, features_only=True, **SHALLOW).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == backbone.feature_info.channels()
    assert [f.shape[2:] for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]


@pytest.mark.parametrize('kwargs', [
    dict(decoupling='stacked', inter1=False, memory=False, early='attention', local='single'),
    dict(decoupling='no_local', inter2=False),
    dict(decoupling='sym', dims=(24, 48, 144, 288)),
])
def test_torchscript_and_fx_match_eager(kwargs):
    torch.manual_seed(0)
    model = _randomised('care_s0', **SHALLOW, **kwargs)
    x = torch.randn(1, 3, 64, 96)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        scripted = torch.jit.script(model)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(traced(x), expected, rtol=1e-5, atol=1e-5)


def test_a_variant_trains_with_the_trainer(tmp_path):
    result = train(Recipe(**dict(TINY, model='care_s0_no_inter2', epochs=2)), tmp_path / 'run', progress=False)
    records = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    assert records[-1]['train_loss'] < 0.7 * records[0]['train_loss']
    assert result.model.stages[0].blocks[0].inter2 is None


def test_fused_variant_without_inter2_refuses_training():
    fused = caretrans.reparameterize(timm.create_model('care_s0_no_inter2', **SHALLOW))
    fused.train()
    with pytest.raises(RuntimeError, match='cannot be trained'):
        fused(torch.randn(2, 3, 64, 64))


# ---------------------------------------------------------------- CLI: profile --variants, bench

def test_profile_variants_table_and_json(monkeypatch, capsys):
    # The counts themselves are tested above; here only what the command makes of them.
    figures = {name: (params, gmacs) for _, name, params, gmacs, _ in ABLATION_ROWS}
    figures['care_s2_sym'] = (19.66, 1.94)  # one row off at the paper's precision
    monkeypatch.setattr(profile, '_params_and_gmacs', lambda name: figures[name])
    assert cli_main(['profile', '--variants', '--json']) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r['table'], r['model']) for r in rows] == [(t, n) for t, n, *_ in ABLATION_ROWS]
    assert [r['model'] for r in rows if not r['matches']] == ['care_s2_sym']
    assert rows[0]['options'] == {'decoupling': 'sym'} and rows[3]['options'] == {}
    assert cli_main(['profile', '--variants']) == 0
    lines = capsys.readouterr().out.splitlines()
    sym = next(line for line in lines if 'care_s2_sym' in line)
    assert "decoupling='sym'" in sym and '19.7 (19.7)' in sym and '1.9 (2.0)' in sym and sym.endswith('NO')
    assert sum(line.endswith('yes') for line in lines) == len(ABLATION_ROWS) - 1


def test_bench_times_a_variant_fused_and_unfused(capsys):
    assert cli_main(['bench', '--models', 'care_s0', 'care_s0_no_memory', '--runtimes', 'eager', '--img-size', '64',
                     '--rounds', '2', '--threads', '1', '--json']) == 0
    rows = json.loads(capsys.readouterr().out)['rows']
    assert [(r['model'], r['variant']) for r in rows] == [
        ('care_s0', 'unfused'), ('care_s0', 'fused'), ('care_s0_no_memory', 'unfused'), ('care_s0_no_memory', 'fused')]
    assert rows[2]['params_m'] == pytest.approx(5.40, abs=0.005) and rows[2]['top1'] == 76.5
    assert rows[3]['ratio_to_care_s0'] > 0
