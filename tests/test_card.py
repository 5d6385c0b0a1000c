"""The model card: round trips, checks, and timm reading the preprocessing it records."""
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
