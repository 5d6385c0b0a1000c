"""timm's generic model contract for CARE: TorchScript, torch.fx (and both), pools, intermediates, features.

These restate, for care_s0/s1/s2, what timm's own tests/test_models.py checks of every model
(forward/backward under torch.jit.script and FX tracing with timm's leaf modules and autowrapped
functions), and compare each captured graph's outputs with eager mode.
"""
import warnings

import pytest
import timm
import torch
from timm.layers import get_notrace_functions, get_notrace_modules, set_scriptable
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

import caretrans

VARIANTS = ['care_s0', 'care_s1', 'care_s2']
SIZE = (2, 3, 64, 64)


@pytest.fixture(autouse=True)
def _quiet_deprecations():
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=FutureWarning)  # torch.jit.script is deprecated in 2.14
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        yield


def _model(name, **kwargs):
    torch.manual_seed(0)
    with set_scriptable(True):
        return timm.create_model(name, **kwargs)


def _tracer_kwargs():
    return dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())


def _fx_model(model, train=False):
    """timm's test recipe: trace once, return the node(s) feeding the graph output."""
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=_tracer_kwargs())
    train_return = [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**_tracer_kwargs()).trace(model)
        nodes = list(reversed(graph.nodes))
        out_names = [n.name for n in nodes[0]._input_nodes.keys()]
        names = [n.name for n in nodes]
        train_return = [train_nodes[-names.index(n)] for n in out_names]
    return create_feature_extractor(model, train_return_nodes=train_return, eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=_tracer_kwargs())


@pytest.mark.parametrize('name', VARIANTS)
def test_torchscript_forward_matches_eager(name):
    model = _model(name).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


def test_torchscript_keeps_the_fast_paths_out_and_stays_exact_on_channels_last():
    model = _model('care_s0').eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)  # 1x1 maps: eager crops kernels
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', VARIANTS)
def test_fx_forward_matches_eager(name):
    model = _model(name).eval()
    fx = _fx_model(model)
    x = torch.randn(*SIZE)
    with torch.no_grad():
        out = fx(x)
        out = out[0] if isinstance(out, tuple) else out
        out = next(iter(out.values())) if isinstance(out, dict) else out
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)


def test_fx_backward_reaches_every_parameter():
    model = _model('care_s0', num_classes=42).train()
    fx = _fx_model(model, train=True)
    outputs = tuple(fx(torch.randn(*SIZE)).values())
    torch.cat(outputs).mean().backward()
    missing = [n for n, p in fx.named_parameters() if p.grad is None]
    assert not missing, f'no gradient for {missing[:5]}'
    assert outputs[-1].shape == (2, 42)


def test_fx_then_torchscript_matches_eager():
    model = _model('care_s0').eval()
    fx = torch.jit.script(_fx_model(model))
    x = torch.randn(*SIZE)
    with torch.no_grad():
        out = next(iter(fx(x).values()))
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)


def test_fx_features_and_torchvision_feature_extractor():
    x = torch.randn(1, 3, 96, 64)
    ref = _model('care_s0', features_only=True).eval()
    fx = _model('care_s0', features_only=True, feature_cls='fx').eval()  # same seed: same weights
    with torch.no_grad():
        for a, b in zip(fx(x), ref(x)):
            torch.testing.assert_close(a, b)
    model = _model('care_s0').eval()
    tv = create_feature_extractor(model, {'stages.1': 's8', 'stages.3': 's32'}, tracer_kwargs=_tracer_kwargs())
    with torch.no_grad():
        feats = tv(x)
    assert feats['s8'].shape == (1, 64, 12, 8) and feats['s32'].shape == (1, 1024, 3, 2)


@pytest.mark.parametrize('pool,width', [('avg', 1024), ('max', 1024), ('avgmax', 1024), ('catavgmax', 2048),
                                        ('fast', 1024)])
def test_global_pool_accepts_timm_pool_types(pool, width):
    x = torch.randn(2, 3, 64, 64)
    m = _model('care_s0', num_classes=7, global_pool=pool).eval()
    assert m.head.norm.normalized_shape == (width,) and m.head_hidden_size == width
    with torch.no_grad():
        feats = m.forward_features(x)
        assert m.forward_head(feats, pre_logits=True).shape == (2, width)
        assert m(x).shape == (2, 7)
        if pool == 'max':
            pooled = feats.amax(dim=(2, 3))
            head = m.head
            torch.testing.assert_close(m.forward_head(feats, pre_logits=True).shape, pooled.shape)
            torch.testing.assert_close(head.fc(head.norm(head.act(pooled))), head(feats))
    with pytest.raises(ValueError, match="unknown global_pool 'median'"):
        _model('care_s0', global_pool='median')
    with pytest.raises(ValueError, match='unknown global_pool'):
        m.reset_classifier(3, 'median')


def test_reset_classifier_changes_pool_width():
    m = _model('care_s0').eval()
    m.reset_classifier(5, 'catavgmax')
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    assert m.head_hidden_size == 2048


def test_forward_intermediates_nhwc():
    m = _model('care_s0').eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        nchw = m.forward_intermediates(x, intermediates_only=True)
        nhwc = m.forward_intermediates(x, intermediates_only=True, output_fmt='NHWC')
    for a, b in zip(nchw, nhwc):
        torch.testing.assert_close(a.permute(0, 2, 3, 1), b)
    with pytest.raises(ValueError, match='output_fmt'):
        m.forward_intermediates(x, output_fmt='NCWH')


@pytest.mark.parametrize('feature_cls', [None, 'fx'])
def test_features_only_checks_its_input(feature_cls):
    kwargs = {} if feature_cls is None else dict(feature_cls=feature_cls)
    fm = _model('care_s0', features_only=True, **kwargs).eval()
    if feature_cls is None:
        with pytest.raises(ValueError, match='expected 3 input channel'):
            fm(torch.randn(1, 1, 64, 64))
        with pytest.raises(ValueError, match='too small'):
            fm(torch.randn(1, 3, 16, 64))
    fm.train()
    if feature_cls is None:
        with pytest.raises(ValueError, match='batch size 1'):
            fm(torch.randn(1, 3, 32, 32))


def test_distilled_training_is_off_by_default_as_in_timm():
    m = _model('care_s0', num_classes=3).train()
    assert not m.distilled_training
    out = m(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)


def test_torch_compile_fullgraph_has_no_graph_breaks():
    """One graph for eval and train, un-fused and fused, with a dynamic batch dimension."""
    torch._dynamo.reset()
    model = _model('care_s0', num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    explain = torch._dynamo.explain(model.eval())(x)
    assert explain.graph_break_count == 0 and explain.graph_count == 1
    explain = torch._dynamo.explain(model.train())(x)
    assert explain.graph_break_count == 0
    fused = caretrans.reparameterize(model)
    explain = torch._dynamo.explain(fused)(x)
    assert explain.graph_break_count == 0 and explain.graph_count == 1
