"""Weights that can be found: the released files named by the pretrained_cfg, and timm's Hugging Face layout."""
import json
import subprocess
import sys

import pytest
import timm
import torch

from caretrans.models.care import RELEASE_REPO, released_file_name


@pytest.mark.parametrize('name', ['care_s0', 'care_s1', 'care_s2'])
def test_pretrained_cfg_names_the_release(name):
    cfg = timm.models.get_pretrained_cfg(f'{name}.in1k')
    assert cfg.origin_url == 'https://github.com/zhouyuan888888/CARE-Transformer' == RELEASE_REPO
    assert not cfg.hf_hub_id and not cfg.url and not cfg.has_weights
    file = f'CARETrans_{name[-2:].upper()}.pth.tar'
    assert released_file_name(name) == file
    assert any(file in note and 'pretrained_cfg_overlay' in note for note in cfg.notes)


def test_pretrained_without_a_file_says_where_the_release_is():
    with pytest.raises(RuntimeError) as e:
        timm.create_model('care_s0', pretrained=True)
    message = str(e.value)
    for part in ('CARETrans_S0.pth.tar', RELEASE_REPO, 'drive.google.com', "pretrained_cfg_overlay=dict(file="):
        assert part in message, part
    with pytest.raises(FileNotFoundError, match=r'/nowhere/CARETrans_S1.pth.tar does not exist.*CARETrans_S1.pth.tar'):
        timm.create_model('care_s1', pretrained=True, pretrained_cfg_overlay=dict(file='/nowhere/CARETrans_S1.pth.tar'))


def test_pretrained_with_a_file_loads_it(tmp_path):
    source = timm.create_model('care_s0').eval()
    torch.save(source.state_dict(), tmp_path / 'CARETrans_S0.pth.tar')
    model = timm.create_model('care_s0', pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'CARETrans_S0.pth.tar'))).eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model(x), source(x))


def _trained_model():
    """A CARE model with non-default options and BatchNorm statistics that differ from a fresh one."""
    torch.manual_seed(0)
    model = timm.create_model('care_s0', num_classes=7, in_chans=1, attention_kernel='identity', distillation=False)
    with torch.no_grad():
        model.train()(torch.randn(4, 1, 64, 64))
    return model.eval()


def test_save_for_hf_roundtrips_through_local_dir(tmp_path):
    model = _trained_model()
    timm.models.save_for_hf(model, tmp_path / 'hf', safe_serialization=True)
    assert sorted(p.name for p in (tmp_path / 'hf').iterdir()) == ['config.json', 'model.safetensors']
    config = json.loads((tmp_path / 'hf' / 'config.json').read_text())
    assert (config['architecture'], config['num_classes'], config['pretrained_cfg']['input_size'][0]) == (
        'care_s0', 7, 1)
    assert config['model_args'] == dict(num_classes=7, in_chans=1, attention_kernel='identity', distillation=False,
                                        global_pool='avg')

    loaded = timm.create_model(f'local-dir:{tmp_path / "hf"}', pretrained=True).eval()
    assert (loaded.num_classes, loaded.in_chans, loaded.head_dist) == (7, 1, None)
    x = torch.randn(2, 1, 64, 64)
    assert torch.equal(loaded(x), model(x))
    # Fine-tuning from it for another class count keeps the backbone and resets the classifier.
    with pytest.warns(UserWarning, match='classifier shapes differ'):
        other = timm.create_model(f'local-dir:{tmp_path / "hf"}', pretrained=True, num_classes=3)
    assert other.num_classes == 3
    assert torch.equal(other.stem.conv.weight, model.stem.conv.weight)


_LOAD_IN_A_FRESH_PROCESS = """
import sys
import caretrans, timm, torch
model = timm.create_model('local-dir:' + sys.argv[1], pretrained=True).eval()
torch.manual_seed(1)
print(model.pretrained_cfg['architecture'], model.num_classes, model(torch.randn(1, 1, 64, 64)).sum().item())
"""


def test_import_caretrans_is_all_local_dir_needs(tmp_path):
    model = _trained_model()
    timm.models.save_for_hf(model, tmp_path / 'hf', safe_serialization=True)
    done = subprocess.run([sys.executable, '-c', _LOAD_IN_A_FRESH_PROCESS, str(tmp_path / 'hf')],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    arch, num_classes, total = done.stdout.split()
    torch.manual_seed(1)
    assert (arch, int(num_classes)) == ('care_s0', 7)
    assert float(total) == pytest.approx(model(torch.randn(1, 1, 64, 64)).sum().item(), abs=1e-5)
