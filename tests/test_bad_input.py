"""Bad values reach the user as one `caretrans CMD: error: ...` line, before any work: recipes beside a
checkpoint or given as --recipe, augmentation and interpolation names, non-finite weights, channel counts,
batches that lost images."""
import pytest
import timm
import torch
from PIL import Image

from caretrans.cli import main as cli_main
from caretrans.models.checkpoint import save_weights
from image_files import truncated_png

pytestmark = pytest.mark.usefixtures('one_thread')

# One quick epoch at 32 px without augmentation.
QUICK = ['--img-size', '32', '--epochs', '1', '--warmup-epochs', '0', '--aa', 'none', '--mixup', '0', '--cutmix', '0',
         '--reprob', '0', '--color-jitter', '0', '-j', '0', '--no-progress']


def _folder(root, mode='RGB', per_class=2, size=40):
    for split in ('train', 'val'):
        for i, cls in enumerate(('dark', 'light')):
            (root / split / cls).mkdir(parents=True)
            for j in range(per_class):
                Image.new(mode, (size, size), (60 + 120 * i + j,) * len(mode)).save(root / split / cls / f'{j}.png')
    return root


def _run(tmp_path, in_chans=3, weights=None):
    """A run folder holding best.safetensors (of care_s0, 2 classes) and its class map."""
    run = tmp_path / 'run'
    run.mkdir()
    model = timm.create_model('care_s0', num_classes=2, in_chans=in_chans)
    if weights is not None:
        weights(model)
    save_weights(model, run / 'best.safetensors', model_name='care_s0')
    (run / 'class_map.txt').write_text('dark\nlight\n')
    return run


def _error(capsys, argv):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


@pytest.mark.parametrize('text,message', [
    ('img_size: [32\n', "recipe.yaml is not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)"),
    ('img_size: big\n', "recipe field img_size: 'big' is not valid; expected an integer >= 32"),
    ('crop_pct: [1]\n', 'recipe field crop_pct: [1] is not valid; expected a number > 0 and <= 1'),
    (b'\x89PNG\r\n\x1a\n\x00\xff', 'recipe.yaml is not a text file'),
])
def test_a_bad_recipe_beside_a_checkpoint_is_named_by_validate_and_resume(tmp_path, capsys, text, message):
    data, run = _folder(tmp_path / 'data'), _run(tmp_path)
    recipe = run / 'recipe.yaml'
    recipe.write_bytes(text if isinstance(text, bytes) else text.encode())
    err = _error(capsys, ['validate', '--checkpoint', str(run / 'best.safetensors'), '--data', str(data), '-j', '0'])
    assert err.startswith('caretrans validate: error: ') and message in err
    assert str(recipe) in err or str(run / 'best.safetensors') in err
    (run / 'last.pth').write_bytes(b'')
    if 'recipe field' not in message:  # a resumed run reads the whole file: the same error, naming it
        err = _error(capsys, ['train', '--resume', str(run)])
        assert err.startswith(f'caretrans train: error: recipe {recipe}' if 'text' in message else
                              f'caretrans train: error: {recipe} is not valid YAML')


def test_a_binary_file_as_recipe_is_named(tmp_path, capsys):
    blob = tmp_path / 'weights.bin'
    blob.write_bytes(bytes(range(256)))
    for command in (['train'], ['det', 'train'], ['seg', 'train']):
        err = _error(capsys, command + ['--recipe', str(blob), '--data', str(tmp_path)])
        assert err.endswith(f'error: recipe {blob} is not a text file (a YAML mapping of recipe fields was expected)')


def test_bad_augmentation_and_interpolation_names_are_refused_before_any_work(tmp_path, capsys):
    data, run = _folder(tmp_path / 'data'), _run(tmp_path)
    out = tmp_path / 'out'
    err = _error(capsys, ['train', '--data', str(data), '--output', str(out)] + QUICK + ['--aa', 'bogus'])
    assert err.startswith("caretrans train: error: recipe field aa: 'bogus' is not an auto-augment timm knows")
    assert not out.exists()
    err = _error(capsys, ['validate', '--checkpoint', str(run / 'best.safetensors'), '--data', str(data),
                          '--interpolation', 'bogus'])
    assert err == ("caretrans validate: error: interpolation 'bogus' is not one of bicubic, bilinear, nearest, "
                   'lanczos, box, hamming')


def test_validate_refuses_non_finite_weights_in_one_line(tmp_path, capsys):
    def nan(model):
        with torch.no_grad():
            model.stem.conv.weight[0, 0, 0, 0] = float('nan')
    data, run = _folder(tmp_path / 'data'), _run(tmp_path, weights=nan)
    err = _error(capsys, ['validate', '--checkpoint', str(run / 'best.safetensors'), '--data', str(data), '-j', '0'])
    assert err == (f'caretrans validate: error: {run / "best.safetensors"} holds NaN or infinite values in 1 '
                   'tensor(s) (stem.conv.weight): it cannot be evaluated; use an earlier checkpoint')


def test_grayscale_image_folders_train_and_validate_with_one_channel(tmp_path, capsys):
    data = _folder(tmp_path / 'data', mode='L')
    out = tmp_path / 'out'
    assert cli_main(['train', '--data', str(data), '--in-chans', '1', '-b', '2', '--output', str(out), '--json']
                    + QUICK) == 0
    assert '1 channel(s)' in capsys.readouterr().err  # the run's lines (stdout is the JSON)
    assert cli_main(['validate', '--checkpoint', str(out / 'best.safetensors'), '--data', str(data), '-j', '0',
                     '--json']) == 0
    assert '"count": 4' in capsys.readouterr().out
    # A 3-channel checkpoint reads the same folder as RGB.
    run = _run(tmp_path)
    assert cli_main(['validate', '--checkpoint', str(run / 'best.safetensors'), '--data', str(data), '-j', '0',
                     '--json']) == 0
    assert '"count": 4' in capsys.readouterr().out


def test_a_batch_left_with_one_image_by_an_unreadable_file_says_so(tmp_path, capsys):
    from caretrans.train.engine import _usable_batch
    data = _folder(tmp_path / 'data')
    truncated_png(data / 'train' / 'light' / '1.png')  # opens, fails to decode: its batch of 2 keeps 1 image
    err = _error(capsys, ['train', '--data', str(data), '-b', '2', '--output', str(tmp_path / 'out')] + QUICK)
    assert 'has 1 of its 2 images left once unreadable files are dropped' in err
    assert 'use a batch of 2' not in err
    one = torch.zeros(1, 3, 32, 32), torch.tensor([0])
    assert _usable_batch(one, 0, pairs=False, batch_size=1) is one  # asked for: the model's own message then
    assert _usable_batch((torch.zeros(1, 3, 64, 32), one[1]), 0, pairs=False, batch_size=2)[1].tolist() == [0]
