"""The model card: round trips, checks, and timm reading the preprocessing it records."""
import dataclasses
import json

import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import caretrans  # noqa: F401  (registers the models)
from caretrans.models.card import ModelCard


def _card(**overrides):
    values = dict(architecture='care_s0', label_names=('cat', 'dog', 'fox'), img_size=64, in_chans=1,
                  mean=(0.286,), std=(0.353,), crop_pct=1.0, interpolation='bilinear', dataset='/data/pets')
    values.update(overrides)
    return ModelCard.for_classifier(**values)


def test_card_round_trips_through_json_and_dict():
    card = _card()
    assert ModelCard.from_json(card.to_json()) == card
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    assert card.num_classes == 3 and card.input_size == (1, 64, 64) and card.img_size == 64


@pytest.mark.parametrize('change, message', [
    (dict(label_names=('a', 'a')), 'repeat'),
    (dict(mean=(0.5, 0.5, 0.5)), 'mean/std'),
    (dict(std=(0.0,)), 'std positive'),
    (dict(interpolation='bogus'), 'interpolation'),
    (dict(crop_pct=1.5), 'crop_pct'),
])
def test_card_refuses_inconsistent_values(change, message):
    with pytest.raises(ValueError, match=message):
        _card(**change)


def test_card_from_foreign_values_names_the_source():
    with pytest.raises(ValueError, match='x.safetensors: not a model card'):
        ModelCard.from_dict({'architecture': 'care_s0', 'colour': 'red'}, 'x.safetensors')
    with pytest.raises(ValueError, match='x.safetensors: the model card is not valid JSON'):
        ModelCard.from_json('{', 'x.safetensors')


def test_applied_card_gives_timm_the_trainers_evaluation_transform():
    card = _card()
    model = card.apply(timm.create_model(card.architecture, **card.model_kwargs()))
    config = resolve_data_config(model=model)
    assert config == dict(input_size=(1, 64, 64), interpolation='bilinear', mean=(0.286,), std=(0.353,),
                          crop_pct=1.0, crop_mode='center')
    assert model.pretrained_cfg['label_names'] == ('cat', 'dog', 'fox')
    image = Image.new('L', (90, 70), 128)
    expected = create_transform(64, is_training=False, interpolation='bilinear', crop_pct=1.0, mean=(0.286,),
                                std=(0.353,))(image)
    actual = create_transform(**config)(image)
    assert actual.shape == (1, 64, 64) and torch.equal(actual, expected)


def test_card_travels_with_saved_weights_and_load_checkpoint_applies_it(tmp_path):
    from caretrans.models import describe, load_checkpoint, read_card
    from caretrans.models.checkpoint import save_weights

    card = _card()
    trained = timm.create_model('care_s0', **card.model_kwargs())
    save_weights(trained, tmp_path / 'best.safetensors', card=card, model_name='care_s0', epoch=3)
    assert read_card(tmp_path / 'best.safetensors') == card
    info = describe(tmp_path / 'best.safetensors')
    assert (info.card, info.model, info.num_classes, info.in_chans, info.img_size) == (card, 'care_s0', 3, 1, 64)

    model = load_checkpoint(timm.create_model('care_s0', num_classes=3, in_chans=1), tmp_path / 'best.safetensors')
    assert resolve_data_config(model=model)['input_size'] == (1, 64, 64)
    assert model.pretrained_cfg['label_names'] == card.label_names
    # Fine-tuning to another class count keeps the model's own config: the card's labels are not its.
    other = load_checkpoint(timm.create_model('care_s0', num_classes=5, in_chans=1), tmp_path / 'best.safetensors')
    assert 'label_names' not in other.pretrained_cfg or other.pretrained_cfg['label_names'] != card.label_names


def _saved(tmp_path, card):
    from caretrans.models.checkpoint import save_weights

    torch.manual_seed(0)
    model = timm.create_model(card.architecture, **card.model_kwargs())
    save_weights(model, tmp_path / 'best.safetensors', card=card, model_name=card.architecture)
    return model, tmp_path / 'best.safetensors'


def test_fine_tuning_picks_the_classifier_rows_by_label_name(tmp_path):
    from caretrans.models.checkpoint import load_weights

    trained, path = _saved(tmp_path, _card())
    model = timm.create_model('care_s0', num_classes=2, in_chans=1)
    note = load_weights(model, path, label_names=('fox', 'cat'))
    assert note.endswith('classifier kept by name (2 of its 3 classes, in the new order)')
    for key in ('head.fc.weight', 'head.fc.bias', 'head_dist.fc.weight', 'head_dist.fc.bias'):
        assert torch.equal(model.state_dict()[key], trained.state_dict()[key][[2, 0]]), key
    assert torch.equal(model.stem.conv.weight, trained.stem.conv.weight)
    assert 'label_names' not in model.pretrained_cfg  # the card's labels are not this model's

    # A class the checkpoint does not know: the classifier starts fresh, and the line says why.
    fresh = timm.create_model('care_s0', num_classes=2, in_chans=1)
    torch.manual_seed(1)
    model = timm.create_model('care_s0', num_classes=2, in_chans=1)
    head = model.head.fc.weight.clone()
    note = load_weights(model, path, label_names=('cat', 'wolf'))
    assert note.endswith("classifier reset (the checkpoint's classes lack wolf)")
    assert torch.equal(model.head.fc.weight, head) and torch.equal(model.stem.conv.weight, trained.stem.conv.weight)
    tensors = sum(not k.endswith('num_batches_tracked') for k in fresh.state_dict())
    assert note.startswith(f'loaded {tensors - 4} tensors from {path}')

    # The same classes in the same order: kept, and the card describes the model.
    model = timm.create_model('care_s0', num_classes=3, in_chans=1)
    assert load_weights(model, path, label_names=('cat', 'dog', 'fox')).endswith('classifier kept')
    assert model.pretrained_cfg['label_names'] == ('cat', 'dog', 'fox')


def test_save_for_hf_carries_the_card(tmp_path):
    from caretrans.inference import load_run
    from caretrans.models import describe, load_checkpoint

    card = _card(attention_kernel='identity')
    trained, path = _saved(tmp_path, card)
    model = load_checkpoint(timm.create_model('care_s0', **card.model_kwargs()), path).eval()
    timm.models.save_for_hf(model, tmp_path / 'plain', safe_serialization=True)
    timm.models.save_for_hf(model, tmp_path / 'whole', safe_serialization=True, model_config=card.hf_model_config())

    config = json.loads((tmp_path / 'plain' / 'config.json').read_text())
    assert 'tag' not in config['pretrained_cfg'] and 'notes' not in config['pretrained_cfg']  # not the release's
    assert config['pretrained_cfg']['description'] == 'care_s0 trained on /data/pets (classification)'
    loaded = timm.create_model(f'local-dir:{tmp_path / "plain"}', pretrained=True)
    config = resolve_data_config(model=loaded)  # JSON lists for tuples
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()} == card.data_config()
    assert tuple(loaded.pretrained_cfg['label_names']) == card.label_names
    # describe reads config.json beside model.safetensors; timm's fields hold all but the dataset.
    info = describe(tmp_path / 'plain' / 'model.safetensors')
    assert (info.model, info.num_classes, info.in_chans, info.img_size) == ('care_s0', 3, 1, 64)
    assert info.card == dataclasses.replace(card, dataset='', model_args=dict(card.model_args, global_pool='avg'))
    assert describe(tmp_path / 'whole').card == card  # the card kept whole beside timm's fields

    model, transform, labels = load_run(tmp_path / 'plain')
    assert labels == ['cat', 'dog', 'fox'] and model.head_dist is not None
    x = transform(Image.new('L', (80, 80), 100))[None]
    assert x.shape == (1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained.eval()(x))

