"""The pure helpers of the collapse-and-annealing experiment: the per-label ranges of the latent
codes, the stage check, the test images it shows, its β schedules and the collapsed VAE's ELBO."""

import math

import pytest
import torch

from ppl_vae.errors import ConfigError
from ppl_vae.experiments.collapse_and_annealing import (check_stages, collapsed_elbo, label_ranges, model_recipes,
                                                     shown_images)


def test_label_ranges_take_the_extremes_over_each_labels_rows_and_every_dimension():
    values = torch.tensor([[0.0, 5.0], [-1.0, 2.0], [3.0, 4.0], [7.0, -2.0]])
    labels = torch.tensor([2, 0, 2, 0])

    ranges = label_ranges(values, labels)

    assert ranges == {"labels": [0, 2], "low": [-2.0, 0.0], "high": [7.0, 5.0]}


def test_label_ranges_of_one_point_per_label_span_its_dimensions():
    ranges = label_ranges(torch.tensor([[1.0, -1.0, 0.5]]), torch.tensor([4]))

    assert ranges == {"labels": [4], "low": [-1.0], "high": [1.0]}


@pytest.mark.parametrize("stages", [(), (0, 1), (2, 2), (3, 1)])
def test_stages_must_be_positive_and_strictly_increasing(stages):
    with pytest.raises(ConfigError, match="stages"):
        check_stages(stages)


def test_increasing_stages_pass():
    check_stages((1, 2, 5))


def test_the_annealed_beta_rises_from_zero_to_one_over_the_annealing_epochs():
    from ppl_vae.objectives.schedules import SCHEDULES

    recipes = model_recipes(anneal_epochs=10)
    spec = dict(recipes["annealed"][1])
    schedule = SCHEDULES.get(spec.pop("name"))(**spec)

    assert schedule(step=0, epoch=0) < 0.01
    assert schedule(step=0, epoch=5) == pytest.approx(0.5)
    assert schedule(step=0, epoch=10) > 0.99
    assert {key: beta["value"] for key, (_, beta) in recipes.items() if beta["name"] == "constant"} == {
        "autoencoder": 0.0, "vae": 1.0, "low_capacity": 1.0}


def test_shown_images_are_the_first_of_each_label_in_label_order_then_the_next_in_order():
    labels = torch.tensor([3, 1, 3, 0, 1, 2, 0, 0, 2, 1, 3, 0, 2])
    x = torch.arange(len(labels), dtype=torch.float).unsqueeze(1)  # each image is its own index

    shown = shown_images(x, labels)

    assert shown.squeeze(1).tolist() == [3, 1, 5, 0, 2, 4, 6, 7, 8, 9]
    assert shown_images(x[:4], labels[:4]).squeeze(1).tolist() == [3, 1, 0, 2]


def test_the_collapsed_elbo_is_the_gaussian_log_density_of_the_test_rows_at_the_mean_training_row():
    train = torch.tensor([[0.0, 1.0], [1.0, 1.0]])  # mean row (0.5, 1.0)
    test = torch.tensor([[0.5, 0.0], [1.5, 1.0]])  # squared distances 1 and 1
    sigma = 2.0
    expected = -math.log(2 * math.pi * sigma**2) - 1.0 / (2 * sigma**2)  # D = 2: -D/2 log(2πσ²) - ||x - m||²/(2σ²)

    assert collapsed_elbo(train, test, sigma) == pytest.approx(expected)
