"""CARE models: construction options, Table 5 figures, released-checkpoint parity, errors."""
import json
import logging
import pickle
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F

import caretrans
from caretrans.bench.profile import PAPER_FIGURES
from caretrans.models.complexity import count_macs, count_params
from caretrans.cli import main as cli_main
from caretrans.models import CheckpointError, checkpoint_filter_fn, describe, load_checkpoint, save_atomic
from caretrans.models.checkpoint import filter_state_dict
from reference_care import random_released_state_dict, reference_forward
from released import authors_logits, released_keys

VARIANTS = ['care_s0', 'care_s1', 'care_s2']


def _pretrained(name, path, **kwargs):
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


# ---------------------------------------------------------------- registration & options

def test_registered_with_timm():
    assert set(VARIANTS) <= set(timm.list_models('care_*'))
    cfg = timm.create_model('care_s0').pretrained_cfg
    assert cfg['crop_pct'] == 0.875 and cfg['interpolation'] == 'bicubic'
    assert cfg['mean'] == (0.485, 0.456, 0.406) and cfg['std'] == (0.229, 0.224, 0.225)
    assert cfg['first_conv'] == 'stem.conv' and cfg['classifier'] == ('head.fc', 'head_dist.fc')


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(RuntimeError, match='Unknown model'):
        timm.create_model('care_s9')


@pytest.mark.parametrize('name', VARIANTS)
def test_table5_params_and_macs(name):
    model = timm.create_model(name)
    paper = PAPER_FIGURES[name]
    assert abs(count_params(model) / 1e6 - paper['params_m']) < 0.005
    assert abs(count_macs(model, 224) / 1e9 - paper['gmacs']) < 0.005
    assert abs(count_macs(model, 512, features_only=True) / 1e9 - paper['backbone_gmacs_512']) < 0.05


def test_options_are_applied():
    m = timm.create_model('care_s0', num_classes=10, in_chans=1, drop_rate=0.2, drop_path_rate=0.1,
                          layer_scale_init_value=1e-3)
    assert m.stem.conv.in_channels == 1
    assert m.head.fc.out_features == 10 and m.head_dist.fc.out_features == 10
    assert m.head.drop.p == 0.2
    blocks = [b for s in m.stages for b in s.blocks]
    rates = [getattr(b.drop_path, 'drop_prob', 0.0) for b in blocks[:-1]]
    assert rates == sorted(rates) and rates[0] == 0.0 and rates[-1] == pytest.approx(0.1 * 16 / 17)
    assert torch.all(blocks[0].layer_scale == 1e-3)
    assert blocks[-1].layer_scale is None  # the wide last block has no layer scale
    assert m.no_weight_decay() == {n for n, _ in m.named_parameters() if n.endswith('layer_scale')}
    assert len(m.no_weight_decay()) == 17


def test_attention_kernel_option():
    torch.manual_seed(0)
    elu = timm.create_model('care_s0').eval()
    ident = timm.create_model('care_s0', attention_kernel='identity').eval()
    ident.load_state_dict(elu.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = elu.stages[2].blocks[0].token_mixer.global_mixer(torch.randn(2, 32, 4, 4).abs())
    assert a.shape == (2, 32, 4, 4)
    with torch.no_grad():
        assert not torch.allclose(elu(x), ident(x))
    with pytest.raises(ValueError, match='attention_kernel'):
        timm.create_model('care_s0', attention_kernel='softmax')


def test_heads_train_and_eval():
    torch.manual_seed(0)
    m = timm.create_model('care_s0', num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    m.train()
    assert m(x).shape == (2, 5)  # as timm's DeiT: one tensor unless distilled training is turned on
    m.set_distilled_training(True)
    out, out_dist = m(x)
    assert out.shape == out_dist.shape == (2, 5)
    m.eval()
    with torch.no_grad():
        feats = m.forward_features(x)
        logits = m(x)
        torch.testing.assert_close(logits, (m.head(feats) + m.head_dist(feats)) / 2)

    single = timm.create_model('care_s0', num_classes=5, distillation=False)
    assert single.head_dist is None
    assert isinstance(single.train()(x), torch.Tensor)
    assert count_params(timm.create_model('care_s0')) - count_params(timm.create_model('care_s0', distillation=False)) \
        == 1024 * 2 + 1024 * 1000 + 1000


def test_pre_logits_and_global_pool_as_timm():
    m = timm.create_model('care_s0', num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert m(x).shape == (2, m.num_features) == (2, 1024)
        m2 = timm.create_model('care_s0', num_classes=0, global_pool='').eval()
        assert m2(x).shape == (2, 1024, 2, 2)
        m3 = timm.create_model('care_s0').eval()
        assert m3.forward_head(m3.forward_features(x), pre_logits=True).shape == (2, 1024)
        m3.reset_classifier(7)
        assert m3(x).shape == (2, 7) and m3.get_classifier().out_features == 7
        m3.reset_classifier(0, '')
        assert m3(x).shape == (2, 1024, 2, 2)


def test_grad_checkpointing_matches():
    torch.manual_seed(0)
    m = timm.create_model('care_s0', num_classes=4, distillation=False).eval()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    ref = m(x).sum()
    ref.backward()
    g_ref = x.grad.clone()
    x.grad = None
    m.set_grad_checkpointing(True)
    out = m(x).sum()
    out.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, g_ref)


@pytest.mark.parametrize('name', VARIANTS)
def test_gradient_reaches_every_parameter(name):
    torch.manual_seed(0)
    m = timm.create_model(name, num_classes=10, drop_path_rate=0.1).train()
    m.set_distilled_training(True)
    out, out_dist = m(torch.randn(2, 3, 64, 64))
    (out.logsumexp(1).mean() + out_dist.logsumexp(1).mean()).backward()
    for n, p in m.named_parameters():
        assert p.grad is not None, f'{n} got no gradient'
        assert torch.isfinite(p.grad).all(), f'{n} has a non-finite gradient'
        assert p.grad.abs().sum() > 0, f'{n} has an all-zero gradient'


def test_feature_info_and_features_only():
    m = timm.create_model('care_s0')
    assert [f['num_chs'] for f in m.feature_info] == [32, 64, 128, 1024]
    assert [f['reduction'] for f in m.feature_info] == [4, 8, 16, 32]
    fm = timm.create_model('care_s0', features_only=True, out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        feats = fm(torch.randn(1, 3, 128, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 32, 24), (1, 64, 16, 12), (1, 128, 8, 6), (1, 1024, 4, 3)]


# ---------------------------------------------------------------- input checks

@pytest.mark.parametrize('shape,match', [
    ((2, 1, 64, 64), 'expected 3 input channel'),
    ((2, 3, 31, 64), 'too small'),
    ((2, 3, 64, 16), 'too small'),
    ((3, 64, 64), '4-D'),
])
def test_bad_input_is_a_value_error(shape, match):
    m = timm.create_model('care_s0').eval()
    with pytest.raises(ValueError, match=match):
        m(torch.randn(*shape))


def test_batch_of_one_in_training():
    m = timm.create_model('care_s0').train()
    with pytest.raises(ValueError, match='batch size 1'):
        m(torch.randn(1, 3, 32, 40))
    out = m(torch.randn(1, 3, 64, 64))  # 2x2 at stride 32: BatchNorm has 4 values
    assert out.shape == (1, 1000)


def test_forward_is_quiet(caplog):
    """No warning and no log line from a forward (torch's deprecated is_fx_tracing logged one on every call)."""
    model = timm.create_model('care_s0', num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(), caplog.at_level(logging.DEBUG):
        warnings.simplefilter('error')
        model.train()(x).sum().backward()
        with torch.no_grad():
            model.eval()(x.contiguous(memory_format=torch.channels_last))
            caretrans.reparameterize(model)(x)
    assert [r.getMessage() for r in caplog.records] == []


@pytest.mark.parametrize('size', [(32, 32), (33, 47), (45, 77), (97, 65)])
def test_odd_sizes(size):
    m = timm.create_model('care_s0').eval()
    with torch.no_grad():
        feats = m.forward_features(torch.randn(1, 3, *size))
    assert feats.shape == (1, 1024, size[0] // 4 // 8, size[1] // 4 // 8)


# ---------------------------------------------------------------- released checkpoints

@pytest.mark.parametrize('name', VARIANTS)
@pytest.mark.parametrize('key', ['224', '160x192'])
def test_fixture_parity_through_timm(released_checkpoint, name, key):
    """Each variant loaded from a released-format file computes the authors' logits."""
    expected = authors_logits(name)
    m = _pretrained(name, released_checkpoint(name)).eval()
    x, ref = (expected['input'], expected['logits']) if key == '224' else \
        (expected['input_160x192'], expected['logits_160x192'])
    with torch.no_grad():
        out = m(x)
    assert (out - ref).abs().max() < 1e-4


@pytest.mark.parametrize('name', VARIANTS)
def test_released_layout_matches_spec_reference(name):
    """Each variant's released key list loads strictly and computes the spec (tests/reference_care.py)."""
    sd = random_released_state_dict(released_keys(name))
    m = timm.create_model(name).eval()
    m.load_state_dict(caretrans.checkpoint_filter_fn(sd, m), strict=True)
    x = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(m(x), reference_forward(name, sd, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('size', [(32, 32), (33, 47), (64, 64)])
def test_channels_last_matches_spec_reference(size):
    """Channels-last input takes the GEMM 1x1 and cropped-kernel depthwise paths; same function."""
    sd = random_released_state_dict(released_keys('care_s0'))
    m = timm.create_model('care_s0').eval()
    m.load_state_dict(caretrans.checkpoint_filter_fn(sd, m), strict=True)
    m = m.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = m(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, reference_forward('care_s0', sd, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('kernel,size', [((3, 3), (1, 1)), ((3, 3), (2, 2)), ((7, 7), (2, 2)), ((7, 7), (1, 3)),
                                         ((11, 1), (2, 5)), ((1, 11), (4, 3)), ((7, 7), (9, 9))])
def test_depthwise_conv_crop_is_exact_with_gradients(kernel, size):
    torch.manual_seed(0)
    conv = caretrans.models.care.DepthwiseConv(8, kernel)
    x = torch.randn(3, 8, *size).to(memory_format=torch.channels_last).requires_grad_()
    out = conv(x)
    ref = F.conv2d(x, conv.weight, conv.bias, padding=conv.padding, groups=8)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, conv.weight, conv.bias], g)
    ref_grads = torch.autograd.grad(ref, [x, conv.weight, conv.bias], g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'channel_slice'])
def test_pointwise_conv_is_a_conv_with_gradients(layout):
    torch.manual_seed(0)
    conv = caretrans.models.care.PointwiseConv(6, 10)
    x = torch.randn(2, 9, 5, 3)
    x = {'contiguous': x[:, :6], 'channels_last': x[:, :6].to(memory_format=torch.channels_last),
         'channel_slice': x.to(memory_format=torch.channels_last)[:, 3:]}[layout].requires_grad_()
    out = conv(x)
    ref = F.conv2d(x, conv.weight, conv.bias)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.square().sum(), [x, conv.weight, conv.bias])
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, conv.weight, conv.bias])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('name', VARIANTS)
def test_reference_matches_authors_fixture(released_checkpoint, name):
    """The spec reference itself reproduces the authors' logits, so it is a fair judge of the random layouts."""
    expected = authors_logits(name)
    sd = torch.load(released_checkpoint(name), weights_only=True)
    assert (reference_forward(name, sd, expected['input']) - expected['logits']).abs().max() < 1e-4


@pytest.mark.parametrize('wrap', ['state_dict', 'model', 'state_dict_ema', 'module'])
def test_wrapped_released_checkpoints(released_checkpoint, tmp_path, wrap):
    sd = torch.load(released_checkpoint(), weights_only=True)
    obj = {f'module.{k}': v for k, v in sd.items()} if wrap == 'module' else {wrap: sd, 'epoch': 3}
    path = tmp_path / 'ckpt.pth'
    torch.save(obj, path)
    expected = authors_logits('care_s0')
    for m in (_pretrained('care_s0', path), load_checkpoint(timm.create_model('care_s0'), path)):
        with torch.no_grad():
            assert (m.eval()(expected['input']) - expected['logits']).abs().max() < 1e-4


def test_load_checkpoint_converts_with_the_filter_given_else_the_models_own(released_checkpoint):
    path = released_checkpoint()
    calls = []

    def spy(checkpoint, model):
        calls.append(model)
        return checkpoint_filter_fn(checkpoint, model)

    model = load_checkpoint(timm.create_model('care_s0'), path, filter_fn=spy).eval()
    assert calls == [model]
    expected = authors_logits('care_s0')
    with torch.no_grad():
        assert (model(expected['input']) - expected['logits']).abs().max() < 1e-4
    # A filter that does not know the released names: every released key is unexpected, named with the file.
    with pytest.raises(CheckpointError, match=f'{path.name} does not match care_s0.*unexpected key.*dist_head'):
        load_checkpoint(timm.create_model('care_s0'), path, filter_fn=filter_state_dict)


def test_own_checkpoints_roundtrip(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model('care_s0', num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    for name in ('w.safetensors', 'w.pth'):
        sd = src.state_dict()
        save_atomic(sd if name.endswith('.pth') else {k: v for k, v in sd.items()}, tmp_path / name)
        dst = load_checkpoint(timm.create_model('care_s0', num_classes=3), tmp_path / name).eval()
        with torch.no_grad():
            torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['w.pth', 'w.safetensors']  # no temp files left


def test_other_class_count_drops_heads_with_warning(released_checkpoint):
    with pytest.warns(UserWarning, match='heads left at their initialisation'):
        m = _pretrained('care_s0', released_checkpoint(), num_classes=10)
    sd = torch.load(released_checkpoint(), weights_only=True)
    torch.testing.assert_close(m.stem.conv.weight, sd['stem.0.weight'])
    assert m.head.fc.weight.shape == (10, 1024)


def test_distillation_false_and_gray_input_load_released(released_checkpoint):
    m = _pretrained('care_s0', released_checkpoint(), distillation=False, in_chans=1)
    sd = torch.load(released_checkpoint(), weights_only=True)
    torch.testing.assert_close(m.stem.conv.weight, sd['stem.0.weight'].sum(1, keepdim=True))
    torch.testing.assert_close(m.head.fc.weight, sd['head.fc.weight'])


def test_other_variant_is_rejected(tmp_path):
    path = tmp_path / 's1.pth'
    torch.save(random_released_state_dict(released_keys('care_s1')), path)
    with pytest.raises(CheckpointError, match='does not match care_s0.*unexpected key'):
        _pretrained('care_s0', path)
    with pytest.raises(CheckpointError, match='does not match'):
        load_checkpoint(timm.create_model('care_s0'), path)
    path2 = tmp_path / 's2.pth'
    torch.save(random_released_state_dict(released_keys('care_s2')), path2)
    with pytest.raises(CheckpointError, match='shape mismatch'):
        load_checkpoint(timm.create_model('care_s1'), path2)


def test_missing_keys_are_named(released_checkpoint, tmp_path):
    sd = torch.load(released_checkpoint(), weights_only=True)
    del sd['stages.2.blocks.0.token_mixer.qk.weight']
    torch.save(sd, tmp_path / 'partial.pth')
    with pytest.raises(CheckpointError, match='missing key.*stages.2.blocks.0.token_mixer.global_mixer.qk.weight'):
        load_checkpoint(timm.create_model('care_s0'), tmp_path / 'partial.pth')


@pytest.mark.parametrize('name,missing,reshaped', [
    ('care_s0', 'stages.2.blocks.0.token_mixer.global_mixer.qk.weight', 'stem.conv.bias'),
    ('resnet18', 'layer1.0.conv1.weight', 'bn1.bias'),
])
def test_strict_false_loads_what_fits_and_names_the_rest(tmp_path, name, missing, reshaped):
    torch.manual_seed(0)
    sd = dict(timm.create_model(name, num_classes=3).state_dict())
    del sd[missing]
    sd[reshaped] = torch.zeros(5)
    sd['extra.weight'] = torch.zeros(2)
    path = save_atomic(sd, tmp_path / 'partial.pth')
    problems = f'1 shape mismatch.*{reshaped}.*1 missing key.*{missing}.*1 unexpected key.*extra.weight'
    with pytest.raises(CheckpointError, match=problems):
        load_checkpoint(timm.create_model(name, num_classes=3), path)  # strict by default
    model = timm.create_model(name, num_classes=3)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match=problems + '.*strict=False'):
        assert load_checkpoint(model, path, strict=False) is model
    for k, v in model.state_dict().items():  # what fits is loaded, the rest keeps its initialisation
        assert torch.equal(v, fresh[k] if k in (missing, reshaped) else sd[k]), k


def test_non_finite_weights_are_named_at_load(tmp_path):
    sd = dict(timm.create_model('care_s0', num_classes=3).state_dict())
    sd['stages.1.blocks.0.layer_scale'] = torch.full_like(sd['stages.1.blocks.0.layer_scale'], float('nan'))
    sd['head.fc.bias'] = torch.tensor([0.0, float('inf'), 0.0])
    save_atomic(sd, tmp_path / 'nan.safetensors')
    with pytest.warns(UserWarning, match=r'nan\.safetensors: 2 tensor\(s\) hold NaN or inf values') as caught:
        load_checkpoint(timm.create_model('care_s0', num_classes=3), tmp_path / 'nan.safetensors')
    message = str(next(w.message for w in caught if 'NaN' in str(w.message)))
    assert 'stages.1.blocks.0.layer_scale' in message and 'head.fc.bias' in message


def test_describe_says_what_a_checkpoint_holds(released_checkpoint, tmp_path):
    released = describe(released_checkpoint())  # released names (stem.0), no model or recipe recorded
    assert (released.model, released.num_classes, released.in_chans, released.img_size, released.recipe) == \
        (None, 1000, 3, None, {})
    run = tmp_path / 'run'
    save_atomic(timm.create_model('care_s0', num_classes=7, in_chans=1).state_dict(), run / 'weights.safetensors')
    (run / 'recipe.yaml').write_text('model: care_s0_sym\nimg_size: 32\ncrop_pct: 1.0\n')
    ours = describe(run / 'weights.safetensors')  # the recipe of its run folder
    assert (ours.model, ours.num_classes, ours.in_chans, ours.img_size) == ('care_s0_sym', 7, 1, 32)
    assert ours.model_kwargs() == dict(num_classes=7, in_chans=1) and ours.recipe['crop_pct'] == 1.0
    save_atomic({'model': timm.create_model('resnet18', num_classes=5, in_chans=2).state_dict(),
                 'model_name': 'resnet18', 'recipe': dict(model='resnet18', img_size=64)}, tmp_path / 'last.pth')
    other = describe(tmp_path / 'last.pth')  # another timm model: its own classifier and first conv
    assert (other.model, other.num_classes, other.in_chans, other.img_size) == ('resnet18', 5, 2, 64)
    assert describe(tmp_path / 'last.pth', model='care_s0').model_kwargs() == {}  # no head.fc, no stem.conv
    torch.save(torch.zeros(3), tmp_path / 'tensor.pth')
    with pytest.raises(CheckpointError, match='tensor.pth: expected a state dict, got a Tensor'):
        describe(tmp_path / 'tensor.pth')


class _Exploit:
    def __reduce__(self):
        return (print, ('pwned',))


def test_unsafe_and_corrupt_files(tmp_path, capsys):
    evil = tmp_path / 'evil.pth'
    with open(evil, 'wb') as f:
        pickle.dump({'stem.0.weight': _Exploit()}, f)
    torch.save({'x': _Exploit()}, tmp_path / 'evil_zip.pth')
    text = tmp_path / 'notes.pth'
    text.write_text('these are not weights')
    truncated = tmp_path / 'cut.pth'
    torch.save(timm.create_model('care_s0').state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    bad_st = tmp_path / 'bad.safetensors'
    bad_st.write_bytes(b'\x00' * 64)
    model = timm.create_model('care_s0')
    for path, match in [(evil, 'refusing to unpickle'), (tmp_path / 'evil_zip.pth', 'refusing to unpickle'),
                        (text, 'not a PyTorch checkpoint'), (truncated, 'truncated or corrupt'),
                        (bad_st, 'not a readable safetensors'), (tmp_path / 'nope.pth', 'does not exist')]:
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(model, path)
    with pytest.raises(Exception, match='weights_only=True blocked'):
        _pretrained('care_s0', tmp_path / 'evil_zip.pth')
    assert 'pwned' not in capsys.readouterr().out


# ---------------------------------------------------------------- profile CLI

def test_profile_cli_json(capsys):
    assert cli_main(['profile', '--models', 'care_s0', '--json']) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row['model'] == 'care_s0'
    assert abs(row['params_m'] - 7.34) < 0.005 and abs(row['gmacs'] - 0.72) < 0.005
    assert abs(row['backbone_gmacs'] - 3.8) < 0.05


def test_profile_cli_table_and_unknown_model(capsys):
    assert cli_main(['profile', '--models', 'care_s0']) == 0
    out = capsys.readouterr().out
    assert 'care_s0' in out and '7.34 (7.34)' in out and '0.72 (0.72)' in out and '3.8 (3.8)' in out
    assert cli_main(['profile', '--models', 'care_s9']) == 2
    assert "unknown model 'care_s9'" in capsys.readouterr().err
