"""Inference re-parameterisation: every fusion is exact, nothing of BatchNorm is left, fused models refuse training."""
import copy

import pytest
import timm
import torch

import caretrans
from caretrans.models.care import CareBlock, CareHead, CareTransformer, Downsample, Interaction, Stem
from released import authors_logits

VARIANTS = ['care_s0', 'care_s1', 'care_s2']


def _randomised(name, **kwargs):
    """A model whose BatchNorm statistics, norms and layer scales are far from their initial values,
    so that a wrong fold cannot hide behind identities."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    for n, p in model.named_parameters():
        if n.endswith('layer_scale'):
            p.data.uniform_(0.1, 1.0)
    return model


def _max_diff(a, b, x):
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


@pytest.mark.parametrize('name', VARIANTS)
def test_fused_equals_unfused_at_odd_sizes(name):
    model = _randomised(name)
    fused = caretrans.reparameterize(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert fused.head_dist is None and fused.head.norm.weight is None  # one head, affine folded
    n_params = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in fused.parameters())
    assert n_params > 1024 * 1000  # the second classifier is gone
    for size in [(64, 64), (33, 47), (97, 65)]:
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
        assert _max_diff(model, fused, x) < 1e-4


@pytest.mark.parametrize('name', ['care_s0', 'care_s2'])
def test_fused_released_fixture_matches_authors_logits(released_checkpoint, name):
    expected = authors_logits(name)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(released_checkpoint(name))))
    fused = caretrans.reparameterize(model)
    with torch.no_grad():
        assert (fused(expected['input_160x192']) - expected['logits_160x192']).abs().max() < 1e-4
        assert (fused(expected['input'][:1]) - expected['logits'][:1]).abs().max() < 1e-4


def test_each_fusion_on_its_own():
    model = _randomised('care_s0')
    x = torch.randn(2, 32, 16, 16)
    block = model.stages[0].blocks[0]
    parts = [(model.stem, torch.randn(2, 3, 32, 32)), (model.stages[1].downsample, x), (block.inter1, x[:, 8:]),
             (block.inter2, x), (block, x)]
    for module, inp in parts:
        with torch.no_grad():
            before = module(inp)
            module.reparameterize()
            torch.testing.assert_close(module(inp), before, rtol=1e-5, atol=1e-5)
    feats = torch.randn(2, 1024, 3, 2)
    with torch.no_grad():
        both = (model.head(feats) + model.head_dist(feats)) / 2
        torch.testing.assert_close(CareHead.merged(model.head, model.head_dist)(feats), both, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_timm_reparameterize_model_works_on_care(mode):
    """As for FastViT and MobileOne, in either mode (timm.create_model returns a model in training mode): the
    running statistics fold, the mode stays as it was, and in eval mode the copy computes what the model does."""
    model = _randomised('care_s0').train(mode == 'train')
    fused = timm.utils.reparameterize_model(model)  # a fused copy; timm walks the children only
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert fused.training == model.training
    model.eval(), fused.eval()
    x = torch.randn(1, 3, 64, 64)
    assert _max_diff(model, fused, x) < 1e-4
    again = caretrans.reparameterize(copy.deepcopy(fused))  # idempotent modules; the root merges the heads
    assert again.head_dist is None and _max_diff(fused, again, x) < 1e-4


@pytest.mark.parametrize('kwargs', [dict(num_classes=0), dict(num_classes=5, global_pool=''),
                                    dict(num_classes=5, distillation=False, in_chans=1)])
def test_fused_variants_of_the_head(kwargs):
    model = _randomised('care_s0', **kwargs)
    fused = caretrans.reparameterize(copy.deepcopy(model))
    x = torch.randn(2, model.in_chans, 64, 96)
    assert _max_diff(model, fused, x) < 1e-4


def test_fused_features_only():
    model = timm.create_model('care_s0', features_only=True).eval()
    fused = caretrans.reparameterize(copy.deepcopy(model))
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        for a, b in zip(model(x), fused(x)):
            assert (a - b).abs().max() < 1e-4


def test_fused_model_is_for_inference_only():
    model = timm.create_model('care_s0').train()
    fused = caretrans.reparameterize(model)
    assert not fused.training
    fused.train()
    with pytest.raises(RuntimeError, match='cannot be trained: call model.eval'):
        fused(torch.randn(2, 3, 64, 64))
    block = timm.create_model('care_s0').train().stages[0].blocks[0]
    block.reparameterize()  # folds in training mode too (timm.utils.reparameterize_model), then refuses to run
    with pytest.raises(RuntimeError, match='cannot be trained'):
        block(torch.randn(2, 32, 16, 16))


def test_reparameterize_visits_each_module_once(monkeypatch):
    """One walk: each module fuses what it owns, once (no block re-fusing its units, no second walk)."""
    calls = []
    for cls in (CareTransformer, CareBlock, Stem, Downsample, Interaction):
        def spy(self, _fuse=cls.reparameterize):
            calls.append(self)
            return _fuse(self)
        monkeypatch.setattr(cls, 'reparameterize', spy)
    model = _randomised('care_s0', depths=(1, 1, 1, 1))
    fused = caretrans.reparameterize(copy.deepcopy(model))
    owners = [m for m in fused.modules() if isinstance(m, (CareTransformer, CareBlock, Stem, Downsample, Interaction))]
    assert len(owners) == 1 + 4 + 1 + 3 + 8 and sorted(map(id, calls)) == sorted(map(id, owners))
    assert _max_diff(model, fused, torch.randn(2, 3, 64, 64)) < 1e-4
