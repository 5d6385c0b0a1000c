"""An independent, functional re-statement of docs/architecture.md over the *released* key names.

Tests compare the package's model against it for every variant, so S1 and S2 are held to
the spec even though only S0 has a fixture computed by the authors' code.
"""
import torch
import torch.nn.functional as F

VARIANTS = {
    'care_s0': dict(depths=(2, 4, 8, 4), dims=(24, 48, 96, 192)),
    'care_s1': dict(depths=(3, 6, 10, 6), dims=(24, 48, 96, 192)),
    'care_s2': dict(depths=(3, 6, 10, 6), dims=(24, 48, 144, 288)),
}
HEAD_DIMS = (None, None, 16, 32)


def _bn(sd, p, x):
    return F.batch_norm(x, sd[p + '.running_mean'], sd[p + '.running_var'], sd[p + '.weight'], sd[p + '.bias'],
                        False, 0.0, 1e-5)


def _conv(sd, p, x, stride=1, groups=1):
    w = sd[p + '.weight']
    return F.conv2d(x, w, sd[p + '.bias'], stride=stride, padding=(w.shape[2] // 2 * (stride == 1),
                                                                    w.shape[3] // 2 * (stride == 1)), groups=groups)


def _dw(sd, p, x):
    return _conv(sd, p, x, groups=x.shape[1])


def _linear_attention(sd, p, a, head_dim):
    B, g, H, W = a.shape
    N, h = H * W, g // head_dim
    q, k = _conv(sd, p + '.qk', a).split(g, dim=1)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    heads = lambda t: t.reshape(B, h, head_dim, N).permute(0, 1, 3, 2)  # noqa: E731
    q, k, v = heads(q), heads(k), heads(a)
    z = 1.0 / (torch.einsum('bhnd,bhd->bhn', q, k.mean(dim=2)) + 1e-6)
    kv = torch.einsum('bhnd,bhne->bhde', k, v) / N
    out = torch.einsum('bhnd,bhde->bhne', q, kv) * z[..., None]
    return out.permute(0, 1, 3, 2).reshape(B, g, H, W)


def _interaction(sd, p, x, project=True):
    y = F.gelu(_conv(sd, p + '_fc1', _bn(sd, p + '_norm', x)))
    y = _dw(sd, p + '_conv', y)
    return _conv(sd, p + '_fc2', y) if project else y


def _block(sd, p, x, g, stage, last):
    m, a, l3, l7 = x.split(g, dim=1)
    t = p + '.token_mixer'
    if stage < 2:
        a = _dw(sd, t + '.dwconvatt_1', a) + _dw(sd, t + '.dwconvatt_2', a)
    else:
        a = _linear_attention(sd, t, a, HEAD_DIMS[stage])
    f = torch.cat([a, _dw(sd, t + '.dwconv1', l3), _dw(sd, t + '.dwconv2', l7)], dim=1)
    y = f + _interaction(sd, p + '.inter_layer.inter1', f)
    u = torch.cat([m, y], dim=1)
    if last:
        return _interaction(sd, p + '.inter_layer.inter2', u, project=False)
    out = u + _interaction(sd, p + '.inter_layer.inter2', u)
    return x + sd[p + '.gamma'].view(1, -1, 1, 1) * out


def _head(sd, p, x):
    x = F.layer_norm(F.gelu(x.mean(dim=(2, 3))), (x.shape[1],), sd[p + '.norm.weight'], sd[p + '.norm.bias'], 1e-6)
    return F.linear(x, sd[p + '.fc.weight'], sd[p + '.fc.bias'])


@torch.no_grad()
def reference_forward(variant, sd, x):
    """Eval-mode logits (mean of the two heads) of the released model with state dict `sd`."""
    cfg = VARIANTS[variant]
    x = _bn(sd, 'stem.1', _conv(sd, 'stem.0', x, stride=4))
    for i, (depth, d) in enumerate(zip(cfg['depths'], cfg['dims'])):
        if i > 0:
            x = _conv(sd, f'stages.{i}.downsample.1', _bn(sd, f'stages.{i}.downsample.0', x), stride=2)
        for j in range(depth):
            x = _block(sd, f'stages.{i}.blocks.{j}', x, d // 3, i, last=(i == 3 and j == depth - 1))
    return (_head(sd, 'head', x) + _head(sd, 'dist_head', x)) / 2


def random_released_state_dict(keys, seed=0):
    """Random weights (and BN statistics) with exactly the given released keys and shapes."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in keys.items():
        if key.endswith('num_batches_tracked'):
            sd[key] = torch.tensor(0)
        elif key.endswith('running_var'):
            sd[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith('gamma'):
            sd[key] = torch.rand(shape, generator=gen)  # large enough to make every block matter
        else:
            sd[key] = torch.randn(shape, generator=gen) * 0.1
    return sd
