"""Training: recipe and flags, distillation loss, a short run that learns, checkpoints, NaN stop, validate."""
import dataclasses
import json
import shutil
from contextlib import nullcontext

import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from caretrans.cli import build_parser, main as cli_main
from caretrans.cli.train import build_recipe
from caretrans.models.checkpoint import CheckpointError, load_checkpoint, save_atomic, weights_info
from caretrans.models.checkpoint_info import describe
from caretrans.runtime.state import load_training_state
from caretrans.train.loss import DistillationLoss, base_criterion
from caretrans.train.recipe import Recipe, load_recipe
from caretrans.train.trainer import train


pytestmark = pytest.mark.usefixtures('one_thread')

# A few seconds of training: 128 synthetic 32x32 images, 8 steps of 16 per epoch, no augmentation.
TINY = dict(data='synthetic', img_size=32, batch_size=16, workers=0, epochs=3, warmup_epochs=0, lr=2e-3,
            drop_path=0.0, scale=(1.0, 1.0), hflip=0.0, aa=None, color_jitter=0.0, reprob=0.0, mixup=0.0,
            cutmix=0.0, smoothing=0.0, crop_pct=1.0)


def test_recipe_defaults_are_the_papers():
    r = Recipe()
    assert (r.opt, r.weight_decay, r.sched, r.epochs, r.warmup_epochs) == ('adamw', 0.05, 'cosine', 300, 5)
    assert (r.aa, r.mixup, r.cutmix, r.reprob, r.color_jitter, r.smoothing, r.drop_path) == (
        'rand-m9-mstd0.5-inc1', 0.8, 1.0, 0.25, 0.4, 0.1, 0.1)
    assert r.scaled_lr(world_size=12) == pytest.approx(2e-3)  # 128 x 12 GPUs = 1536
    assert dataclasses.replace(r, batch_size=64, grad_accum_steps=2).scaled_lr(1) == pytest.approx(2e-3 * 128 / 1536)
    assert Recipe.from_dict(__import__('yaml').safe_load(r.to_yaml())) == r


def test_flags_follow_timm_and_override_the_preset(tmp_path):
    args = build_parser().parse_args([
        'train', '--recipe', 'fashion-mnist-quick', '-b', '64', '--lr', '1e-3', '--epochs', '2', '--model-ema',
        '--amp', '--drop-path', '0.2', '--smoothing', '0', '--aa', 'none', '--reprob', '0.1', '--scale', '0.5', '1',
        '--warmup-epochs', '1', '--weight-decay', '0.01', '--seed', '3', '--workers', '0', '--no-channels-last'])
    r = build_recipe(args)
    assert (r.data, r.img_size, r.batch_size, r.lr, r.epochs, r.model_ema, r.amp) == (
        'fashion-mnist', 32, 64, 1e-3, 2, True, True)
    assert (r.drop_path, r.smoothing, r.reprob, r.scale, r.channels_last, r.seed) == (0.2, 0.0, 0.1, (0.5, 1.0), False, 3)
    (tmp_path / 'r.yaml').write_text(r.to_yaml())
    assert load_recipe(str(tmp_path / 'r.yaml')) == r
    (tmp_path / 'bad.yaml').write_text('lr: 1\nlearning_rate: 2\n')
    with pytest.raises(ValueError, match='unknown recipe field.*learning_rate'):
        load_recipe(str(tmp_path / 'bad.yaml'))


def test_no_weight_decay_on_norms_biases_and_layer_scales():
    from timm.optim import create_optimizer_v2
    model = timm.create_model('care_s0', num_classes=10)
    opt = create_optimizer_v2(model, opt='adamw', lr=1e-3, weight_decay=0.05)
    decayed = {id(p) for g in opt.param_groups if g['weight_decay'] > 0 for p in g['params']}
    for name, p in model.named_parameters():
        no_decay = p.ndim <= 1 or name.endswith('layer_scale')
        assert (id(p) not in decayed) == no_decay, name


def test_distillation_loss_is_deits_hard_distillation():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    images, targets = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 3])
    head, head_dist = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    loss_fn = DistillationLoss(base_criterion(False, 0.1), teacher).train()
    loss = loss_fn(images, (head, head_dist), targets)
    teacher_labels = teacher(images).argmax(1)
    smoothed = 0.9 * F.cross_entropy(head, targets) + 0.1 * -F.log_softmax(head, 1).mean(1).mean()
    assert loss.item() == pytest.approx(0.5 * smoothed.item() + 0.5 * F.cross_entropy(head_dist, teacher_labels).item())
    loss.backward()
    assert not teacher.training and all(p.grad is None for p in teacher.parameters())
    # Without a teacher both heads learn the labels.
    plain = DistillationLoss(torch.nn.CrossEntropyLoss())
    assert plain(images, (head, head_dist), targets).item() == pytest.approx(
        (F.cross_entropy(head, targets) + F.cross_entropy(head_dist, targets)).item() / 2)
    with pytest.raises(ValueError, match='distillation head'):
        loss_fn(images, head, targets)


def test_short_run_learns_and_checkpoints_roundtrip(tmp_path, capsys):
    recipe = Recipe(**TINY)
    result = train(recipe, tmp_path / 'run', progress=False)
    records = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in records] == [1, 2, 3]  # one numbering: the bar's, the log's, the weights'
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith('epoch ')]
    assert [line.split(':')[0] for line in lines] == ['epoch 1/3', 'epoch 2/3', 'epoch 3/3']
    assert records[-1]['train_loss'] < 0.5 * records[0]['train_loss']
    # 24 steps: BatchNorm's running statistics lag at first, so judge the last epoch.
    assert result.metrics['top1'] >= 75.0 and result.best_top1 == max(r['val_top1'] for r in records)
    for name in ('recipe.yaml', 'metrics.csv', 'curves.png', 'best.safetensors', 'last.pth'):
        assert (tmp_path / 'run' / name).is_file(), name
    # The best weights: safetensors (nothing to unpickle) that say, away from their run folder, what they are.
    best = shutil.copy(tmp_path / 'run' / 'best.safetensors', tmp_path / 'elsewhere.safetensors')
    assert weights_info(best) == dict(model_name='care_s0', epoch=str(max(records, key=lambda r: r['val_top1'])['epoch']),
                                      top1=str(result.best_top1))
    assert (describe(best).model, describe(best).num_classes, describe(best).in_chans) == ('care_s0', 10, 3)
    assert load_recipe(str(tmp_path / 'run' / 'recipe.yaml')) == recipe
    state = load_training_state(tmp_path / 'run' / 'last.pth')
    assert (state['epoch'], state['batch'], state['global_step']) == (3, 0, 24)
    assert {'model', 'ema', 'optimizer', 'scheduler', 'scaler', 'rng', 'recipe'} <= set(state)
    # Our checkpoints load back into a fresh model through the public loader and validate the same.
    fresh = load_checkpoint(timm.create_model('care_s0', num_classes=10), tmp_path / 'run' / 'last.pth')
    for k, v in result.model.state_dict().items():
        if not k.endswith('num_batches_tracked'):  # a counter the loader leaves alone
            assert torch.equal(fresh.state_dict()[k], v.cpu()), k


def test_validate_cli_on_our_checkpoint(tmp_path, capsys):
    recipe = Recipe(**dict(TINY, epochs=1))
    result = train(recipe, tmp_path / 'run', progress=False)
    capsys.readouterr()
    assert cli_main(['validate', '--model', 'care_s0', '--checkpoint', str(tmp_path / 'run' / 'last.pth'),
                     '--data', 'synthetic', '-j', '0', '--json']) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out['img_size'], out['crop_pct'], out['count']) == (32, 1.0, 64)  # from the run's recipe.yaml
    assert out['top1'] == pytest.approx(result.metrics['top1']) and out['loss'] == pytest.approx(result.metrics['loss'])


def test_validate_cli_on_a_released_checkpoint(released_checkpoint, capsys):
    path = released_checkpoint()
    assert cli_main(['validate', '--checkpoint', str(path), '--data', 'synthetic', '--num-classes', '1000',
                     '--img-size', '64', '-j', '0', '--json']) == 0
    out = json.loads(capsys.readouterr().out)
    # The same numbers as timm's pretrained loading of the released file.
    from caretrans.data import create_dataset
    from caretrans.data.loader import build_transform
    model = timm.create_model('care_s0', pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    ds = create_dataset('synthetic', 'val', build_transform(False, 64, (0.5,) * 3, (0.25,) * 3))
    images, labels = map(torch.stack, zip(*[(x, torch.tensor(y)) for x, y in ds]))
    with torch.no_grad():
        logits = model(images)
    assert out['loss'] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert out['top1'] == pytest.approx(100 * (logits.argmax(1) == labels).float().mean().item())


def _write_colour_folder(root, train_classes, val_classes, per_class=4):
    """Class folders of plain-coloured 12x12 images: each class its own colour."""
    colours = dict(red=(255, 0, 0), green=(0, 255, 0), blue=(0, 0, 255), grey=(128, 128, 128))
    for split, classes in (('train', train_classes), ('val', val_classes)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.new('RGB', (12, 12), colours[c]).save(root / split / c / f'{i}.png')
    return root


def test_unreadable_images_are_left_out_of_training_and_evaluation(tmp_path, capsys):
    from image_files import truncated_png
    data = _write_colour_folder(tmp_path / 'data', ('red', 'blue'), ('red', 'blue'))
    (data / 'train' / 'red' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    truncated_png(data / 'val' / 'blue' / 'cut.png')
    recipe = Recipe(**dict(TINY, data=str(data), batch_size=4, epochs=1))
    result = train(recipe, tmp_path / 'run', progress=False)
    assert result.status == 'finished'
    record = json.loads((tmp_path / 'run' / 'metrics.jsonl').read_text())
    assert record['bad_images'] == 2
    assert '2 unreadable image(s) skipped' in capsys.readouterr().out
    # The validation figures count the 8 real images; the cut one is not replaced by another.
    assert result.metrics['count'] == 8 and result.metrics['confusion'].sum(1).tolist() == [4, 4]


def test_train_and_validate_label_a_folder_by_trains_classes(tmp_path, capsys):
    # val/ lacks a class: its images keep train/'s label indices (blue is 0, grey 1, red 2).
    data = _write_colour_folder(tmp_path / 'data', ('red', 'grey', 'blue'), ('red', 'blue'))
    result = train(Recipe(**dict(TINY, data=str(data), batch_size=4, epochs=2, lr=1e-2)), tmp_path / 'run',
                   progress=False)
    assert result.classes == ['blue', 'grey', 'red'] and result.model.num_classes == 3
    assert (tmp_path / 'run' / 'class_map.txt').read_text() == 'blue\ngrey\nred\n'
    assert result.metrics['confusion'].sum(1).tolist() == [4, 0, 4]
    # Resuming (for one more epoch) labels by the run's classes too: a class folder added since is refused.
    (data / 'train' / 'green').mkdir()
    with pytest.raises(ValueError, match='train has class folder.* not among the 3 training classes: green'):
        train(Recipe(**dict(TINY, data=str(data), batch_size=4, epochs=3, lr=1e-2)), tmp_path / 'run',
              resume=str(tmp_path / 'run' / 'last.pth'), progress=False)
    (data / 'train' / 'green').rmdir()
    capsys.readouterr()
    validate = ['validate', '--checkpoint', str(tmp_path / 'run' / 'last.pth'), '-j', '0', '--json', '--data']
    assert cli_main(validate + [str(data)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out['count'] == 8 and out['top1'] == pytest.approx(result.metrics['top1'])
    # A folder with val/ alone is labelled by the run's recorded classes, not by its own folders.
    (tmp_path / 'val_only').mkdir()
    (data / 'val').rename(tmp_path / 'val_only' / 'val')
    (tmp_path / 'val_only' / 'val' / 'blue').rename(tmp_path / 'blue')
    assert cli_main(validate + [str(tmp_path / 'val_only')]) == 0
    red_only = json.loads(capsys.readouterr().out)
    assert red_only['count'] == 4
    # A class the run never saw is refused, named.
    (tmp_path / 'blue').rename(tmp_path / 'val_only' / 'val' / 'green')
    assert cli_main(validate + [str(tmp_path / 'val_only')]) == 2
    assert 'not among the 3 training classes: green' in capsys.readouterr().err


def test_a_folder_of_unreadable_images_stops_train_with_a_clear_error(tmp_path, capsys):
    data = _write_colour_folder(tmp_path / 'data', ('red', 'blue'), ('red', 'blue'))
    for f in (data / 'train').rglob('*.png'):
        f.write_bytes(b'\x89PNG\r\n\x1a\n')
    recipe = _write_recipe(tmp_path, data=str(data), batch_size=4)
    argv = ['train', '--recipe', str(recipe), '--output', str(tmp_path / 'run'), '--no-progress']
    assert cli_main(argv) == 2
    assert f'caretrans train: error: {data / "train"}: none of its 8 image files can be read' in capsys.readouterr().err


def test_a_batch_drops_unreadable_images_and_mixups_odd_one_out():
    from caretrans.train.engine import _usable_batch
    images, targets = torch.zeros(3, 1), torch.tensor([4, 5, 6])
    assert _usable_batch((images, targets), 0, pairs=False)[1].tolist() == [4, 5, 6]
    assert _usable_batch((images, targets), 0, pairs=True)[1].tolist() == [4, 5]  # mixup pairs images
    with pytest.raises(ValueError, match='training batch 7 has no readable image pair left'):
        _usable_batch((images[:1], targets[:1]), 7, pairs=True)
    with pytest.raises(ValueError, match='training batch 8 has no readable image left'):
        _usable_batch(None, 8, pairs=False)


def test_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real_create = timm.create_model
    calls = []

    def create_poisoned(*args, **kwargs):
        model = real_create(*args, **kwargs)

        def poison(module, inputs, output):  # the 11th training forward (epoch 1, batch 2) returns NaN
            if module.training:
                calls.append(1)
                if len(calls) == 11:
                    return tuple(o * float('nan') for o in output)
        model.register_forward_hook(poison)
        return model

    monkeypatch.setattr(timm, 'create_model', create_poisoned)
    run = tmp_path / 'run'
    argv = ['train', '--recipe', str(_write_recipe(tmp_path, epochs=2)), '--output', str(run), '--no-progress']
    assert cli_main(argv) == 3
    err = capsys.readouterr().err
    assert 'not finite' in err and 'epoch 2, batch 3, optimiser step 11' in err and 'last.pth' in err
    state = load_training_state(run / 'last.pth')
    assert (state['epoch'], state['batch']) == (1, 0)
    assert all(torch.isfinite(v).all() for v in state['model'].values() if v.is_floating_point())


def _write_recipe(tmp_path, **changes):
    path = tmp_path / 'recipe.yaml'
    path.write_text(Recipe(**dict(TINY, **changes)).to_yaml())
    return path


def test_resume_refuses_another_model_or_recipe(tmp_path, capsys):
    run = tmp_path / 'run'
    assert cli_main(['train', '--recipe', str(_write_recipe(tmp_path, epochs=1)), '--output', str(run),
                     '--no-progress']) == 0
    last = str(run / 'last.pth')
    base = ['train', '--recipe', str(tmp_path / 'recipe.yaml'), '--output', str(run), '--no-progress']
    assert cli_main(base) == 2
    assert 'already holds a run' in capsys.readouterr().err
    assert cli_main(base + ['--resume', last, '--lr', '0.1']) == 2
    err = capsys.readouterr().err
    assert 'another recipe' in err and 'lr: 0.002 -> 0.1' in err
    with pytest.raises(CheckpointError, match="checkpoint of 'care_s0', not of 'care_s1'"):
        train(Recipe(**dict(TINY, model='care_s1', epochs=1)), run, resume=last, progress=False)
    # Epochs may grow on resume (next test), never shrink.
    with pytest.raises(CheckpointError, match='epochs: 2 -> 1'):
        state = load_training_state(last)
        state['recipe']['epochs'] = 2
        torch.save(state, tmp_path / 'two.pth')
        train(Recipe(**dict(TINY, epochs=1)), run, resume=str(tmp_path / 'two.pth'), progress=False)


def test_resume_continues_with_the_runs_recipe_and_more_epochs(tmp_path, capsys):
    run = tmp_path / 'run'
    assert cli_main(['train', '--recipe', str(_write_recipe(tmp_path, epochs=1)), '--output', str(run),
                     '--no-progress']) == 0
    capsys.readouterr()
    # A finished run resumed as it was: nothing to train, said so, success.
    assert cli_main(['train', '--recipe', str(tmp_path / 'recipe.yaml'), '--resume', str(run / 'last.pth'),
                     '--no-progress']) == 0
    assert f'{run / "last.pth"} has finished its 1 epochs: nothing to train' in capsys.readouterr().out
    # No flags: the run's own recipe.yaml and folder; a larger --epochs trains on.
    assert cli_main(['train', '--resume', str(run), '--epochs', '3', '--no-progress']) == 0
    state = load_training_state(run / 'last.pth')
    assert (state['epoch'], state['global_step'], state['recipe']['epochs']) == (3, 24, 3)
    assert load_recipe(str(run / 'recipe.yaml')) == Recipe(**dict(TINY, epochs=3))
    records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in records] == [1, 2, 3]  # one numbering: the bar's, the log's, the weights'
    # The cosine schedule spans the 3 epochs now: after step 16 of 24 it is a quarter of the way down from
    # lr to min_lr (the 1-epoch schedule would have stayed at min_lr).
    lr, min_lr = TINY['lr'], Recipe().min_lr
    assert records[1]['lr'] == pytest.approx(min_lr + 0.25 * (lr - min_lr))
    assert cli_main(['train', '--resume', str(run), '--epochs', '2', '--no-progress']) == 2
    assert 'epochs: 3 -> 2' in capsys.readouterr().err


def test_initial_checkpoint_fine_tunes_with_a_fresh_classifier(tmp_path, capsys):
    released = timm.create_model('care_s0').state_dict()  # 1000 classes, saved as the authors did
    torch.save(released, tmp_path / 'CARETrans_S0.pth.tar')
    ours = timm.create_model('care_s0', num_classes=10).state_dict()
    save_atomic(ours, tmp_path / 'ours.safetensors')
    recipe = str(_write_recipe(tmp_path, epochs=1, lr=0.0, min_lr=0.0))  # the weights stay the checkpoint's
    for source, weights, keeps_head in (('CARETrans_S0.pth.tar', released, False), ('ours.safetensors', ours, True)):
        run = tmp_path / source.split('.')[0]
        with pytest.warns(UserWarning, match='classifier shapes differ') if not keeps_head else nullcontext():
            assert cli_main(['train', '--recipe', recipe, '--initial-checkpoint', str(tmp_path / source),
                             '--output', str(run), '--no-progress']) == 0
        trained = load_training_state(run / 'last.pth')
        assert trained['recipe']['initial_checkpoint'] == str(tmp_path / source)
        for key in ('stem.conv.weight', 'stages.2.blocks.3.inter2.fc2.weight'):
            assert torch.equal(trained['model'][key], weights[key]), key
        assert trained['model']['head.fc.weight'].shape == (10, 1024)
        assert torch.equal(trained['model']['head.fc.weight'], weights['head.fc.weight']) == keeps_head


def test_training_with_a_teacher_checkpoint(tmp_path, capsys):
    import pickle
    teacher = timm.create_model('resnet18', num_classes=10)
    save_atomic(teacher.state_dict(), tmp_path / 'teacher.safetensors')
    run = ['train', '--recipe', str(_write_recipe(tmp_path, epochs=1)), '--no-progress', '--teacher', 'resnet18']
    assert cli_main(run + ['--teacher-checkpoint', str(tmp_path / 'teacher.safetensors'),
                           '--output', str(tmp_path / 'run')]) == 0
    assert load_training_state(tmp_path / 'run' / 'last.pth')['recipe']['teacher'] == 'resnet18'
    # A teacher file that would run code when unpickled is refused.
    (tmp_path / 'evil.pth').write_bytes(pickle.dumps({'weights': print}))  # a global: code
    assert cli_main(run + ['--teacher-checkpoint', str(tmp_path / 'evil.pth'), '--output', str(tmp_path / 'r2')]) == 2
    assert 'refusing to unpickle' in capsys.readouterr().err


@pytest.mark.parametrize('yaml_text,match', [
    ('lr: fast\n', r"r\.yaml: recipe field lr: 'fast' is not valid; expected a number >= 0"),
    ('batch_size: "8"\n', r"recipe field batch_size: '8' is not valid; expected an integer >= 1"),
    ('lr: 1e-3\n', r"lr: '1e-3' .*YAML reads 1e-3 as text"),
    ('epochs: 0\n', r'epochs: 0 is not valid; expected an integer >= 1'),
    ('scale: 0.5\n', r'scale: 0.5 is not valid; expected a list of 2 numbers > 0 and <= 1, low to high'),
    ('model_ema: 1\n', r'model_ema: 1 is not valid; expected true or false'),
    ('data: [1, 2\n', r'r\.yaml is not valid YAML'),
])
def test_yaml_recipe_values_are_checked(tmp_path, yaml_text, match):
    (tmp_path / 'r.yaml').write_text(yaml_text)
    with pytest.raises(ValueError, match=match):
        load_recipe(str(tmp_path / 'r.yaml'))


@pytest.mark.parametrize('flags,message', [
    (['--img-size', '0'], 'recipe field img_size: 0 is not valid; expected an integer >= 32'),
    (['--img-size', '16'], 'img_size: 16 is not valid'),
    (['--epochs', '0'], 'epochs: 0 is not valid; expected an integer >= 1'),
    (['-b', '0'], 'batch_size: 0 is not valid'),
    (['--lr', '-0.1'], 'lr: -0.1 is not valid; expected a number >= 0'),
    (['--weight-decay', '-1'], 'weight_decay: -1.0 is not valid'),
    (['--reprob', '1.5'], 'reprob: 1.5 is not valid; expected a number >= 0 and <= 1'),
    (['--drop-path', '1'], 'drop_path: 1.0 is not valid; expected a number >= 0 and < 1'),
    (['--scale', '1', '0.5'], 'scale: [1.0, 0.5] is not valid'),
    (['--workers', '-1'], 'workers: -1 is not valid; expected an integer >= 0'),
    (['--threads', '0'], '--threads 0: expected at least 1'),
])
def test_bad_recipe_flags_are_refused_before_any_work(tmp_path, capsys, flags, message):
    run = tmp_path / 'run'
    assert cli_main(['train', '--recipe', str(_write_recipe(tmp_path)), '--output', str(run), '--no-progress']
                    + flags) == 2
    assert message in capsys.readouterr().err
    assert not run.exists()


def test_class_and_channel_counts_the_data_does_not_allow(tmp_path):
    with pytest.raises(ValueError, match='in_chans: 1 does not fit synthetic, whose images have 3 channel'):
        train(Recipe(**dict(TINY, in_chans=1)), tmp_path / 'run', progress=False)
    with pytest.raises(ValueError, match='num_classes: 5 is too few for synthetic, which has 10 classes'):
        train(Recipe(**dict(TINY, num_classes=5)), tmp_path / 'run', progress=False)
    assert not (tmp_path / 'run').exists()


def test_validate_refuses_a_checkpoint_whose_head_does_not_fit_the_data(tmp_path, capsys):
    # A 1000-class (ImageNet) checkpoint on 10-class data would be scored with a random 10-class head.
    save_atomic(timm.create_model('care_s0', num_classes=1000).state_dict(), tmp_path / 'in1k.safetensors')
    argv = ['validate', '--checkpoint', str(tmp_path / 'in1k.safetensors'), '--data', 'synthetic', '--img-size', '32',
            '-j', '0', '--json']
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert 'in1k.safetensors classifies 1000 classes but the model has 10 (those of synthetic val)' in err
    assert cli_main(argv + ['--num-classes', '100']) == 2
    assert 'but the model has 100 (--num-classes)' in capsys.readouterr().err
    assert cli_main(['validate', '--checkpoint', str(tmp_path / 'in1k.safetensors'), '--data', 'synthetic',
                     '--img-size', '0']) == 2
    assert '--img-size 0: expected at least 32' in capsys.readouterr().err
