"""The recipes' figures are valid PNGs of the expected size, with or without reference scores."""

import io

import matplotlib.image

from energy_guidance.recipes.plots import learning_curves, scores_figure


def _image(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(io.BytesIO(data), format="png")


def test_learning_curves_with_and_without_normalised_scores():
    histories = {
        "critic": {"step": [50, 100], "q_loss": [2.0, 1.0], "v_loss": [0.5, 0.2]},
        "energy": {"step": [50, 100], "energy_loss": [0.3, -0.1]},  # not positive: linear axis
    }
    normalised = {
        "aepo": {"score_mean": 80.0, "score_std": 5.0},
        "behaviour": {"score_mean": 20.0, "score_std": 1.0},
    }
    image = _image(learning_curves(histories, normalised, dataset_score=30.0, labels={"aepo": "AEPO"}))
    assert image.shape[1] == 3 * 420  # one panel per phase and the scores, 4.2 in at 100 dpi
    raw = {"aepo": {"return_mean": -150.0, "return_std": 5.0}}
    assert _image(learning_curves(histories, raw)).shape[1] == 3 * 420


def test_scores_figure_has_a_panel_per_dataset():
    table = {
        name: {
            "policies": {"aepo": {"mean": 50.0, "std": 2.0}, "qgpo": {"mean": -3.0, "std": 1.0}},
            "dataset_score": 20.0,
        }
        for name in ("hopper", "walker2d")
    }
    assert _image(scores_figure(table)).shape[1] == 2 * 520
