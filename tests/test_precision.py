"""Half precision (fp16, bf16; weights cast or autocast) against fp32, at extreme input scales.

The linear attention sums over every position (k^T v, the k mean): in fp16 those sums overflow on
inputs of large magnitude while every activation still fits, so the attention computes in fp32.
Each case below is one whose fp32 activations fit the half type's range (fp16: 65504); where they
do not (trained-like weights at 1e4 x the usual scale reach 7e4 in stage 3), only bf16 is run.
"""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import caretrans
from caretrans.kernels import TRITON_INSTALLED
from released import closed_form_state_dict

pytestmark = pytest.mark.usefixtures('one_thread')

# Largest |error| of the logits / largest |fp32 logit|: half rounds each activation to 11 (fp16) or 8 (bf16)
# significant bits; measured (64x64, 2 images) up to 2e-3 (fp16) and 3e-2 (bf16).
TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 6e-2}


def _model(weights: str) -> torch.nn.Module:
    """CARE-S0 in eval mode: timm's initialisation ('init', layer scale 1e-6) or trained-like magnitudes ('released':
    the closed-form weights of tests/released.py, fan-in scaled, layer scale ~0.5)."""
    torch.manual_seed(0)
    model = timm.create_model('care_s0').eval()
    if weights == 'released':
        model.load_state_dict(caretrans.checkpoint_filter_fn(closed_form_state_dict('care_s0'), model))
    return model


def _half_logits(model, x, dtype, how):
    """model(x) in `dtype`: weights and input cast ('cast') or fp32 weights under CPU autocast ('autocast')."""
    with torch.no_grad():
        if how == 'autocast':
            with torch.autocast('cpu', dtype=dtype):
                return model(x).float()
        return copy.deepcopy(model).to(dtype)(x.to(dtype)).float()


CASES = [  # weights, input scale, half types whose range holds every fp32 activation
    ('init', 1e4, (torch.float16, torch.bfloat16)),  # fp16 logits were all NaN: the attention's sums overflowed
    ('init', 1e-4, (torch.bfloat16,)),  # stage 4 holds values of 1e-8, below fp16's smallest (6e-8)
    ('released', 1e4, (torch.bfloat16,)),
    ('released', 1e-4, (torch.float16, torch.bfloat16)),
]


@pytest.mark.parametrize('weights,scale,dtypes', CASES, ids=[f'{w}-x{s:g}' for w, s, _ in CASES])
@pytest.mark.parametrize('how', ['cast', 'autocast'])
def test_half_precision_forward_matches_fp32(weights, scale, dtypes, how):
    model = _model(weights)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * scale
    with torch.no_grad():
        ref = model(x)
    for dtype in dtypes:
        out = _half_logits(model, x, dtype, how)
        assert out.isfinite().all(), f'{dtype}: {(~out.isfinite()).sum().item()} non-finite logits'
        error = (out - ref).abs().max().item() / ref.abs().max().item()
        assert error <= TOLERANCE[dtype], f'{dtype}: relative error {error:.3g}'


@pytest.mark.parametrize('kernels', ['torch', pytest.param('triton', marks=pytest.mark.skipif(
    not TRITON_INSTALLED, reason='triton is not installed'))])
def test_attention_sums_in_fp32_under_half_precision(kernels):
    """The first layer that failed: stage 3's attention on fp16 inputs whose fp32 result fits fp16, eager and
    under autocast (whose products would run in half precision), on the PyTorch path and the fused op (whose
    CPU implementation is the reference; tests/test_triton_kernels.py checks the kernel)."""
    model = _model('init')
    model.set_kernels(kernels)
    attention = model.stages[2].blocks[0].token_mixer.global_mixer
    x = torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(2)) * 3e3
    with torch.no_grad():
        ref = attention(x)
        half = copy.deepcopy(attention).half()(x.half())
        with torch.autocast('cpu', dtype=torch.float16):
            auto = attention(x)
    assert half.dtype == torch.float16 and ref.abs().max() < 65504
    for out in (half, auto):
        assert out.isfinite().all()
        assert (out.float() - ref).abs().max() <= 2e-3 * ref.abs().max()


def _train_steps(model, x, target, dtype=None, steps=3):
    """Losses of `steps` SGD steps (under CPU autocast in `dtype`, fp16 with a GradScaler) and the weights' change."""
    model = copy.deepcopy(model).train()
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 10, enabled=dtype == torch.float16)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        with torch.autocast('cpu', dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    change = torch.cat([(p.detach() - s).flatten() for p, s in zip(model.parameters(), start)])
    return torch.tensor(losses), change


@pytest.mark.parametrize('scale', [1e4, 1e-4])
def test_amp_training_steps_follow_fp32(scale):
    """Three steps of AMP training (bf16; fp16 with loss scaling) stay finite and, at 1e4 x the usual scale, take the
    fp32 steps: the same losses and weights.

    At 1e-4 x the usual scale they stay finite but do not follow fp32, for reasons outside the attention: in training
    the stem's BatchNorm divides a variance of ~1e-10 by sqrt(eps = 1e-5), so the gradient reaching the conv before
    it is 300x amplified, and in half precision it no longer sums to ~0 over the batch as in fp32: fp16 gradients of
    the stem overflow (the loss scaler skips those steps) and bf16 moves the stem's bias by ~2 in one step, next to a
    signal of 1e-5 that bf16's 8 bits then drop.
    """
    torch.manual_seed(0)
    model = timm.create_model('care_s0', num_classes=10, layer_scale_init_value=0.5)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * scale
    target = torch.tensor([0, 3, 5, 9])
    ref_losses, ref_change = _train_steps(model, x, target)
    for dtype in (torch.bfloat16, torch.float16):
        losses, change = _train_steps(model, x, target, dtype)
        assert losses.isfinite().all() and change.isfinite().all(), dtype
        if scale < 1:
            continue
        # measured: losses within 2e-3 (bf16) and 3e-4 (fp16), weight changes within 2e-2 and 2e-3
        assert (losses - ref_losses).abs().max() <= TOLERANCE[dtype] * ref_losses.abs().max(), (dtype, losses)
        drift = (change - ref_change).norm() / ref_change.norm()
        assert drift <= TOLERANCE[dtype], (dtype, drift.item())
