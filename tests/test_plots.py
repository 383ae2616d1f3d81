"""Figures: built without touching matplotlib's global state, returned as Figures, written as PNGs,
and training curves whose panels follow the history (terms, β, the objective's status)."""

import os
import subprocess
import warnings
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from matplotlib.figure import Figure

from ppl_vae.models.vae import VAE
from ppl_vae.objectives.geco import GECO
from ppl_vae.objectives.iwae import IWAE
from ppl_vae.parts.likelihoods import Bernoulli
from ppl_vae.parts.nets import mlp
from ppl_vae.parts.posteriors import DiagonalNormal
from ppl_vae.parts.priors import StandardNormal
from ppl_vae.plots import (BETA_LABEL, TERM_LABELS, image_grid, manifold_grid, plot_kl_per_dim, plot_latent_scatter,
                           plot_manifold, plot_reconstructions, plot_samples, plot_training_curves, posterior_means)
from ppl_vae.runs import run_figures

IMAGE_SHAPE = (4, 4)
DATA_DIM = 16
GECO_PANELS = GECO.status_panels


def tiny_vae(latent_dim: int) -> VAE:
    return VAE(mlp(DATA_DIM, 2 * latent_dim, hidden_sizes=[8]), mlp(latent_dim, DATA_DIM, hidden_sizes=[8]),
               StandardNormal(latent_dim), DiagonalNormal(latent_dim), Bernoulli(DATA_DIM))


def images(count: int = 12) -> torch.Tensor:
    return torch.rand(count, DATA_DIM)


def history(epochs: int, **extra_keys: float) -> list[dict]:
    """Per-epoch records as the training loop writes them: test terms on every other epoch and the last."""
    records = []
    for epoch in range(1, epochs + 1):
        record = {"epoch": epoch, "step": 10 * epoch, "beta": min(1.0, epoch / 3), "train_elbo": -100.0 + epoch,
                  "train_reconstruction": -90.0 + epoch, "train_kl": 10.0, **extra_keys,
                  "seconds": float(epoch), "epoch_seconds": 1.0}
        if epoch % 2 == 0 or epoch == epochs:
            record.update(test_elbo=-101.0 + epoch, test_reconstruction=-91.0 + epoch, test_kl=10.0)
        records.append(record)
    return records


def ylabels(fig: Figure) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes]


def assert_png(path: Path) -> None:
    assert path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_import_leaves_the_backend_alone():
    code = ("import matplotlib; before = matplotlib.get_backend(); import ppl_vae.plots; "
            "print(before, matplotlib.get_backend())")
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MPLBACKEND": "svg"},
                            capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["svg", "svg"]


def test_image_grid_tiles_row_by_row_with_white_gaps():
    grid = image_grid(torch.zeros(5, DATA_DIM), IMAGE_SHAPE, columns=3)
    assert grid.shape == (2 * 4 + 1, 3 * 4 + 2)
    assert grid[4, :].min() == 1.0 and grid[:, 4].min() == 1.0  # the gaps
    assert grid[5:, 10:].min() == 1.0  # the sixth tile is empty


@pytest.mark.parametrize("draw", [
    lambda vae, path: plot_reconstructions(vae, images(), IMAGE_SHAPE, path, count=5),
    lambda vae, path: plot_samples(vae, IMAGE_SHAPE, path, count=9),
    lambda vae, path: plot_latent_scatter(vae, images(), torch.arange(12) % 3, path),
    lambda vae, path: plot_latent_scatter(vae, images(), None, path),
    lambda vae, path: plot_manifold(vae, IMAGE_SHAPE, path, steps=5),
    lambda vae, path: plot_manifold(vae, IMAGE_SHAPE, path, steps=5, codes=posterior_means(vae, images())),
    lambda vae, path: plot_kl_per_dim([0.5, 2.0, 0.001], [True, True, False], path),
    lambda vae, path: plot_training_curves(history(3), path),
], ids=["reconstructions", "samples", "scatter", "scatter-unlabelled", "manifold", "manifold-of-codes", "kl_per_dim",
        "curves"])
def test_each_figure_is_returned_and_written(draw, tmp_path):
    path = tmp_path / "figure.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no library noise (a cmap with no colours to map once warned on Frey Face)
        assert isinstance(draw(tiny_vae(2), path), Figure)
    assert_png(path)
    assert isinstance(draw(tiny_vae(2), None), Figure)  # no path: nothing written
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def tick_values(fig: Figure) -> tuple[list[float], list[float]]:
    ax = fig.axes[0]
    return ([float(label.get_text()) for label in ax.get_xticklabels()],
            [float(label.get_text()) for label in ax.get_yticklabels()])


def test_manifold_ticks_are_the_grid_z_values():
    fig = plot_manifold(tiny_vae(2), IMAGE_SHAPE, steps=5)
    x_labels, y_labels = tick_values(fig)
    z_values = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, 5))  # -1.64 ... 1.64
    assert x_labels == pytest.approx(z_values.tolist(), abs=0.005)
    assert y_labels == pytest.approx(x_labels[::-1])  # z[1] runs up the rows
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == ("z[0] (latent units)", "z[1] (latent units)")


def test_manifold_of_codes_spans_where_the_codes_lie():
    """Codes far from the prior's centre (an autoencoder's, a short run's): the grid follows them."""
    generator = torch.Generator().manual_seed(0)
    codes = torch.stack([3.0 + 0.002 * torch.randn(500, generator=generator),  # off centre and narrow
                         -1.0 + 2.0 * torch.rand(500, generator=generator)], dim=1)  # uniform on [-1, 1]
    fig = plot_manifold(tiny_vae(2), IMAGE_SHAPE, steps=6, codes=codes)
    x_labels, y_labels = tick_values(fig)
    for axis, labels, rounding in ((0, x_labels, 5e-4), (1, y_labels[::-1], 5e-3)):  # z[1] runs up the rows
        values = codes[:, axis]
        low, high = torch.quantile(values, torch.tensor([0.05, 0.95])).tolist()
        assert labels == pytest.approx(torch.linspace(low, high, 6).tolist(), abs=rounding)
        assert values.min() <= min(labels) and max(labels) <= values.max()
        assert labels == sorted(set(labels))  # increasing, told apart by their decimals (three on the narrow axis)
    assert y_labels[0] == pytest.approx(0.9, abs=0.05) and y_labels[-1] == pytest.approx(-0.9, abs=0.05)
    assert "codes" in fig.axes[0].get_title()


def test_manifold_grid_keeps_the_prior_on_an_axis_where_codes_do_not_vary():
    prior_values, _ = manifold_grid(5)
    codes = torch.stack([torch.full((50,), 0.5), torch.linspace(-2, 2, 50)], dim=1)
    x_values, y_values = manifold_grid(5, codes)
    torch.testing.assert_close(x_values, prior_values)
    torch.testing.assert_close(y_values, torch.linspace(-1.8, 1.8, 5), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"codes of shape \(datapoints, 2\), got shape \(50, 3\)"):
        manifold_grid(5, torch.zeros(50, 3))


def test_training_curves_of_an_elbo_run():
    fig = plot_training_curves(history(4))
    assert ylabels(fig) == [TERM_LABELS["elbo"], TERM_LABELS["reconstruction"], TERM_LABELS["kl"], BETA_LABEL]
    elbo_panel, *_, beta_panel = fig.axes
    assert [line.get_label() for line in elbo_panel.get_lines()] == ["train", "test"]
    assert list(elbo_panel.get_lines()[1].get_xdata()) == [2, 4]
    assert beta_panel.get_ylim()[0] == 0
    assert all("nats/datapoint" in label for label in ylabels(fig)[:3])


def test_training_curves_of_a_geco_like_run():
    records = history(3, train_constraint=0.2, geco_lambda=1.5, geco_c_ma=-0.1)
    for record in records:
        record["beta"] = 1.0
    fig = plot_training_curves(records, status_panels=GECO_PANELS, term_labels=GECO.term_labels)
    assert ylabels(fig) == [TERM_LABELS["elbo"], TERM_LABELS["reconstruction"], TERM_LABELS["kl"],
                            GECO.term_labels["constraint"], GECO_PANELS["geco_lambda"][0], GECO_PANELS["geco_c_ma"][0]]
    assert [ax.get_yscale() for ax in fig.axes[-2:]] == ["log", "linear"]


def test_training_curves_keep_beta_when_it_moves_and_title_it_when_it_does_not():
    records = history(3, geco_lambda=1.5, geco_c_ma=-0.1)  # β annealed: the panel stays
    fig = plot_training_curves(records, status_panels=GECO_PANELS)
    assert BETA_LABEL in ylabels(fig) and fig.get_suptitle() == ""
    for record in records:
        record["beta"] = 0.5
    fig = plot_training_curves(records)  # a constant β: a flat line says less than the title
    assert BETA_LABEL not in ylabels(fig)
    assert fig.get_suptitle() == f"{BETA_LABEL} = 0.5 at the end of every epoch"
    for record in records:
        record["beta"] = 1.0
    assert plot_training_curves(records).get_suptitle().startswith(f"{BETA_LABEL} = 1 ")
    assert plot_training_curves(records, status_panels=GECO_PANELS).get_suptitle() == ""  # GECO weighs the KL itself


def test_training_curves_of_an_iwae_like_run():
    fig = plot_training_curves(history(3, train_iwae=-98.0), term_labels=IWAE.term_labels)
    assert ylabels(fig) == [TERM_LABELS["elbo"], TERM_LABELS["reconstruction"], TERM_LABELS["kl"],
                            IWAE.term_labels["iwae"], BETA_LABEL]
    assert len(fig.axes[3].get_lines()) == 1  # no test_iwae: the train curve only


def test_one_epoch_shows_markers(tmp_path):
    records = history(1)
    records[0]["beta"] = 0.0  # an autoencoder: β = 0, said in the title
    fig = plot_training_curves(records, tmp_path / "curves.png")
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert len(lines) == 3 * 2
    for line in lines:
        assert len(line.get_xdata()) == 1
        assert line.get_marker() not in (None, "None", "") and line.get_markersize() > 0
    assert fig.get_suptitle() == f"{BETA_LABEL} = 0 at the end of every epoch"
    assert [tick for tick in fig.axes[0].get_xticks() if 0.5 <= tick <= 1.5] == [1.0]  # whole epochs on the axis
    assert_png(tmp_path / "curves.png")


def test_an_annealed_beta_of_zero_stays_on_the_axis():
    records = history(3)
    records[0]["beta"] = 0.0
    beta_panel = plot_training_curves(records).axes[-1]
    assert beta_panel.get_ylabel() == BETA_LABEL and beta_panel.get_ylim()[0] == 0
    assert not beta_panel.get_lines()[0].get_clip_on()  # β = 0 sits on the x axis, drawn whole


def test_training_curves_of_an_empty_history():
    assert len(plot_training_curves([]).axes) == 1


@pytest.mark.parametrize("latent_dim, names", [
    (2, ["reconstructions.png", "samples.png", "training_curves.png", "latent_scatter.png", "manifold.png"]),
    (3, ["reconstructions.png", "samples.png", "training_curves.png"]),
])
def test_run_figures(tmp_path, latent_dim, names):
    x, labels = images(), torch.arange(12) % 3
    vae = tiny_vae(latent_dim)
    run = SimpleNamespace(out_dir=tmp_path, vae=vae, history=history(2),
                          dataset=SimpleNamespace(split={"test": (x, labels)}.__getitem__, image_shape=IMAGE_SHAPE),
                          objective=SimpleNamespace(status_panels={}, term_labels={}))
    paths = run_figures(run)
    assert paths == [tmp_path / name for name in names]
    for path in paths:
        assert_png(path)
    assert vae.training  # the mode it had before
