"""The diagnosis read from a run's curves, on curves shaped like the ones notebook 2 provokes (a learning rate that
fits, one ten times higher, one a hundred times lower) and a run still learning at its end."""

import numpy as np

from tljax.train.curves import diagnose

STEPS = np.arange(1, 101)
CHANCE = 0.588  # the majority class's share of the validation reviews


def validation(losses, accuracies):
    return [(25 * (i + 1), loss, accuracy) for i, (loss, accuracy) in enumerate(zip(losses, accuracies))]


def verdict(train_losses, losses, accuracies, chance=CHANCE) -> str:
    text = diagnose(list(zip(STEPS.tolist(), train_losses)), validation(losses, accuracies), "accuracy", chance)
    return text.splitlines()[-1].split(":")[0]


def test_a_learning_rate_too_high_is_diverging_not_over_fitting():
    # the loss leaps above a fresh model's (0.69) at once and wanders around 0.8-1.1, the validation loss rises
    # after a minimum (what alone reads as over-fitting) and the accuracy is one label's share
    rng = np.random.default_rng(0)
    train = [0.69] + (0.95 - 0.002 * STEPS[1:] + 0.15 * rng.standard_normal(99)).tolist()
    assert verdict(train, [0.85, 0.82, 0.90, 0.95], [0.412, 0.588, 0.412, 0.412]) == "Diverging"


def test_over_fitting_is_a_falling_train_loss_under_a_rising_validation_loss():
    train = np.linspace(0.69, 0.10, 100).tolist()
    assert verdict(train, [0.60, 0.54, 0.62, 0.68], [0.70, 0.73, 0.72, 0.72]) == "Over-fitting"


def test_a_learning_rate_too_low_is_under_fitting():
    train = np.linspace(0.687, 0.648, 100).tolist()
    assert verdict(train, [0.705, 0.71, 0.72, 0.726], [0.412, 0.412, 0.412, 0.412]) == "Under-fitting"


def test_a_run_still_learning_and_one_that_settled():
    train = np.linspace(0.69, 0.30, 100).tolist()
    assert verdict(train, [0.60, 0.52, 0.47, 0.43], [0.70, 0.75, 0.78, 0.80]) == "Still improving at the end"
    assert verdict(train, [0.60, 0.50, 0.45, 0.45], [0.70, 0.76, 0.80, 0.80]) == "A good fit"


def test_an_early_spike_that_the_run_recovers_from_is_not_divergence():
    # warm-up jolts the loss to 1.2 for a few steps; then it learns well below where it began
    train = [0.69, 1.2, 1.3, 1.1] + np.linspace(0.8, 0.25, 96).tolist()
    assert verdict(train, [0.60, 0.50, 0.45, 0.45], [0.70, 0.76, 0.80, 0.80]) == "A good fit"
    # and a language model's loss, with no majority class to compare with
    assert verdict(np.linspace(10.6, 7.0, 100).tolist(), [9.0, 8.0, 7.5, 7.4], [0.0] * 4, chance=None) == \
        "Still improving at the end"
