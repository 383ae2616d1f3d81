"""Importance-sampled log-likelihood, its diagnostics and latent health, against ground truth.

Probabilistic PCA (z ~ N(0, I), x|z ~ N(Wz + b, σ²I)) built from the project's parts has an exact
log p(x) = log N(x; b, WWᵀ + σ²I) and an exact posterior; a trained Bernoulli MLP is checked
against an independent plain-torch computation on the same weights. Every evaluation takes
``model, guide, *data``: the PPCA is also evaluated as a model of two tensors (x, y) and as a model
of two latent sites, which must give the same numbers.
"""

import json
import math

import matplotlib

matplotlib.use("Agg")
import arviz as az  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from pyro.infer.util import is_validation_enabled  # noqa: E402
from torch.distributions import MultivariateNormal  # noqa: E402

from ppl_vae.errors import EvaluationError  # noqa: E402
from ppl_vae.evaluation import (  # noqa: E402
    PSIS_MIN_SAMPLES,
    DiagnosticWarning,
    evaluate_elbo,
    importance_sample,
    kl_per_dimension,
    latent_health,
    log_likelihood,
    marginal_kl,
    psis_khat,
    to_inference_data,
    unit_activity,
)
from ppl_vae.models.vae import VAE  # noqa: E402
from ppl_vae.objectives.traces import PlateLayout, log_weights  # noqa: E402
from ppl_vae.parts.likelihoods import Bernoulli, Gaussian  # noqa: E402
from ppl_vae.parts.nets import mlp  # noqa: E402
from ppl_vae.parts.posteriors import DiagonalNormal, FullNormal  # noqa: E402
from ppl_vae.parts.priors import GaussianMixture, StandardNormal  # noqa: E402

SIGMA = 0.5
SCALES = torch.tensor([2.0, 0.03], dtype=torch.float64)  # the second direction barely reaches the data
DATA_DIM = 5
TIGHT = 1e-6  # float64, but the likelihood keeps log σ as it was built: a float32 number, good to ~1e-8


class PPCA:
    """A probabilistic PCA VAE (linear encoder and decoder, Gaussian likelihood) in float64.

    W = Q diag(s) has orthogonal columns, so the exact posterior N(A(x - b), σ² (WᵀW + σ²I)⁻¹)
    is diagonal, with A = diag(s / (s² + σ²)) Qᵀ: the guide's family holds it exactly.
    """

    def __init__(self, guide_shift: float = 0.0, guide_variance_factor: float = 1.0) -> None:
        generator = torch.Generator().manual_seed(1)
        q, _ = torch.linalg.qr(torch.randn(DATA_DIM, len(SCALES), generator=generator, dtype=torch.float64))
        self.weight = q * SCALES
        self.bias = torch.randn(DATA_DIM, generator=generator, dtype=torch.float64)
        self.gain = (SCALES / (SCALES**2 + SIGMA**2)).unsqueeze(1) * q.T  # A
        self.posterior_variance = SIGMA**2 / (SCALES**2 + SIGMA**2)
        latent = len(SCALES)
        encoder, decoder = mlp(DATA_DIM, 2 * latent, hidden_sizes=[]), mlp(latent, DATA_DIM, hidden_sizes=[])
        likelihood = Gaussian(DATA_DIM, sigma=SIGMA, squash="none")
        self.vae = VAE(encoder, decoder, StandardNormal(latent), DiagonalNormal(latent), likelihood).double()
        with torch.no_grad():
            decoder[0].weight.copy_(self.weight)
            decoder[0].bias.copy_(self.bias)
            encoder[0].weight.zero_()
            encoder[0].weight[:latent] = self.gain
            encoder[0].bias[:latent] = -self.gain @ self.bias + guide_shift
            encoder[0].bias[latent:] = torch.log(self.posterior_variance * guide_variance_factor)

    def sample_data(self, num: int, seed: int = 2) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(num, len(SCALES), generator=generator, dtype=torch.float64)
        noise = torch.randn(num, DATA_DIM, generator=generator, dtype=torch.float64)
        return z @ self.weight.T + self.bias + SIGMA * noise

    def exact_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        covariance = self.weight @ self.weight.T + SIGMA**2 * torch.eye(DATA_DIM, dtype=torch.float64)
        return MultivariateNormal(self.bias, covariance).log_prob(x)


def monte_carlo_error(estimate) -> torch.Tensor:
    """Delta-method standard error of a log-mean-exp estimate: sqrt(1/ESS - 1/K) per datapoint."""
    return (1 / estimate.ess - 1 / estimate.num_samples).clamp(min=0).sqrt()


def test_exact_posterior_guide_makes_every_weight_log_px():
    ppca = PPCA()
    vae, x = ppca.vae, ppca.sample_data(12)
    exact = ppca.exact_log_likelihood(x)
    with torch.no_grad():
        weights = log_weights(vae.model, vae.guide, x, num_particles=200)
    assert weights.shape == (200, 12)
    torch.testing.assert_close(weights, exact.expand(200, 12), rtol=0, atol=TIGHT)
    estimate = importance_sample(vae.model, vae.guide, x, num_samples=200, psis=False)
    torch.testing.assert_close(estimate.elbo, exact, rtol=0, atol=TIGHT)
    torch.testing.assert_close(estimate.log_likelihood, exact, rtol=0, atol=TIGHT)
    torch.testing.assert_close(estimate.ess, torch.full_like(exact, 200.0), rtol=TIGHT, atol=0)


def test_estimate_converges_to_exact_log_px_and_elbo_stays_below():
    ppca = PPCA(guide_shift=0.3, guide_variance_factor=2.0)  # a wider, shifted guide: not the posterior
    vae, x = ppca.vae, ppca.sample_data(20)
    exact = ppca.exact_log_likelihood(x)
    estimate = importance_sample(vae.model, vae.guide, x, num_samples=5000, batch_size=7, particle_batch_size=1200)
    error = monte_carlo_error(estimate)
    assert bool((error < 0.05).all())
    assert bool(((estimate.log_likelihood - exact).abs() < 4 * error + 1e-6).all())
    # the guide is off, so the ELBO is strictly below log p(x): by its KL gap, far beyond Monte Carlo error
    assert bool((estimate.elbo < exact - 0.05).all())
    assert estimate.khat.shape == (20,) and bool((estimate.khat < 0.7).all())
    # a single sample is the ELBO: much further off on average than K = 5000
    single = log_likelihood(vae.model, vae.guide, x, num_samples=1)
    assert (single - exact).abs().mean() > 10 * (estimate.log_likelihood - exact).abs().mean()


def test_chunking_over_datapoints_keeps_each_datapoint_its_own():
    ppca = PPCA()  # every weight is log p(x): any mix-up of datapoints between chunks would show
    vae, x = ppca.vae, ppca.sample_data(10)
    whole = log_likelihood(vae.model, vae.guide, x, num_samples=40, batch_size=10, particle_batch_size=40)
    chunked = log_likelihood(vae.model, vae.guide, x, num_samples=40, batch_size=3, particle_batch_size=7)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=TIGHT)
    torch.testing.assert_close(whole, ppca.exact_log_likelihood(x), rtol=0, atol=TIGHT)


def test_only_the_first_batch_of_particles_is_validated(host_reads):
    """Argument validation checks the plate probe and the first batch of particles, where a model or
    guide that does not fit the data shows; the other batches run without it (and its host reads)
    and estimate the same."""
    ppca = PPCA()
    vae, x = ppca.vae, ppca.sample_data(10)
    validated = []

    def guide(x):
        validated.append(is_validation_enabled())
        vae.guide(x)

    with host_reads() as reads:
        estimate = log_likelihood(vae.model, guide, x, num_samples=40, batch_size=5, particle_batch_size=15)
    assert validated == [True, True] + [False] * 5  # the probe, then 2 chunks of datapoints x 3 batches
    assert is_validation_enabled()
    torch.testing.assert_close(estimate, ppca.exact_log_likelihood(x), rtol=0, atol=TIGHT)
    with host_reads() as first_batch_reads:
        log_likelihood(vae.model, vae.guide, x[:5], num_samples=15, batch_size=5, particle_batch_size=15)
    assert len(reads) == len(first_batch_reads) > 0
    bad = x.clone()
    bad[7, 0] = math.inf  # in the second chunk, which validation does not see
    with pytest.raises(EvaluationError, match="datapoint 7 of data argument 0 holds NaN or Inf"):
        log_likelihood(vae.model, vae.guide, bad, num_samples=40, batch_size=5, particle_batch_size=15)


def two_tensor_ppca(ppca: PPCA, split: int = 2):
    """The PPCA's model and guide on two tensors per datapoint, x (the first ``split`` numbers) and y
    (the rest), observed at two sites of the data plate: the same joint density as the PPCA's."""
    vae = ppca.vae

    def model(x, y):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", vae.prior())
            loc = vae.decoder(z)
            pyro.sample("x", dist.Normal(loc[..., :split], SIGMA).to_event(1), obs=x)
            pyro.sample("y", dist.Normal(loc[..., split:], SIGMA).to_event(1), obs=y)

    def guide(x, y):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", vae.encode(torch.cat([x, y], dim=-1)))

    return model, guide


def test_two_tensors_in_the_data_plate_are_chunked_together():
    ppca = PPCA()  # the exact posterior: every weight is log p(x, y), so any mispairing of rows would show
    vae, data = ppca.vae, ppca.sample_data(10)
    model, guide = two_tensor_ppca(ppca)
    x, y = data[:, :2], data[:, 2:]
    chunked = log_likelihood(model, guide, x, y, num_samples=40, batch_size=3, particle_batch_size=7)
    torch.testing.assert_close(chunked, ppca.exact_log_likelihood(data), rtol=0, atol=TIGHT)
    # the closed-form KL terms and posterior means are deterministic: chunks of 3 equal the one-tensor VAE's
    torch.testing.assert_close(kl_per_dimension(model, guide, x, y, batch_size=3),
                               kl_per_dimension(vae.model, vae.guide, data))
    torch.testing.assert_close(unit_activity(model, guide, x, y, batch_size=3), unit_activity(vae.model, vae.guide, data))
    assert evaluate_elbo(model, guide, x, y, batch_size=3)["kl"] == pytest.approx(
        evaluate_elbo(vae.model, vae.guide, data)["kl"], rel=1e-12)
    with pytest.raises(EvaluationError, match=r"same length .* \[10, 9\]"):
        log_likelihood(model, guide, x, y[:9], num_samples=2)


def two_latent_site_ppca(ppca: PPCA):
    """The PPCA with z = (z_0, z_1) sampled at two latent sites, z_1 (site "second") before z_0 (site "first")."""
    vae = ppca.vae

    def coordinate(normal, index):
        return dist.Normal(normal.base_dist.loc[..., index : index + 1], normal.base_dist.scale[..., index : index + 1])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            second = pyro.sample("second", coordinate(vae.prior(), 1).to_event(1))
            first = pyro.sample("first", coordinate(vae.prior(), 0).to_event(1))
            pyro.sample("x", vae.decode(torch.cat([first, second], dim=-1)), obs=x)

    def guide(x):
        posterior = vae.encode(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("second", coordinate(posterior, 1).to_event(1))
            pyro.sample("first", coordinate(posterior, 0).to_event(1))

    return model, guide


def test_several_latent_sites_are_concatenated_in_site_order():
    ppca = PPCA()
    vae, x = ppca.vae, ppca.sample_data(1000)
    model, guide = two_latent_site_ppca(ppca)
    torch.testing.assert_close(log_likelihood(model, guide, x[:10], num_samples=20),
                               ppca.exact_log_likelihood(x[:10]), rtol=0, atol=TIGHT)
    torch.testing.assert_close(kl_per_dimension(model, guide, x), kl_per_dimension(vae.model, vae.guide, x).flip(0))
    torch.testing.assert_close(unit_activity(model, guide, x), unit_activity(vae.model, vae.guide, x).flip(0))
    # the aggregate of exact posteriors is the prior, whichever way z is split into sites
    assert abs(marginal_kl(model, guide, x)) < 0.05


def test_latent_health_of_ppca_matches_closed_forms():
    ppca = PPCA()
    x = ppca.sample_data(2000)
    health = latent_health(ppca.vae.model, ppca.vae.guide, x)
    # the exact posterior: Cov_x(E[z_u|x]) = s_u² / (s_u² + σ²); KL_u = E_x ½(m_u² + v_u - 1 - log v_u)
    activity = SCALES**2 / (SCALES**2 + SIGMA**2)
    torch.testing.assert_close(torch.tensor(health["unit_activity"], dtype=torch.float64), activity,
                               rtol=0.1, atol=1e-3)
    assert health["active_units"] == 1
    means = (x - ppca.bias) @ ppca.gain.T
    v = ppca.posterior_variance
    expected_kl = 0.5 * (means**2 + v - 1 - v.log()).mean(0)
    torch.testing.assert_close(torch.tensor(health["kl_per_dim"], dtype=torch.float64), expected_kl)
    # the aggregate of exact posteriors is the prior: KL(q(z) || p(z)) -> 0 and I(x; z) = ½ Σ log(1 + s²/σ²)
    assert abs(health["marginal_kl"]) < 0.05
    mutual_information = 0.5 * torch.log1p(SCALES**2 / SIGMA**2).sum().item()
    assert health["mutual_information"] == pytest.approx(mutual_information, abs=0.05)


@pytest.fixture(scope="module")
def bernoulli_run(tmp_path_factory):
    """A Bernoulli MLP VAE trained briefly on the 8x8 digits, with binarized test digits."""
    from ppl_vae.config import from_dict
    from ppl_vae.runs import fit

    config = from_dict({"train": {"epochs": 4, "eval_every": 4, "checkpoint_every": 4, "progress": False},
                        "model": {"latent_dim": 2}, "optim": {"lr": 0.003}})
    run = fit(config, tmp_path_factory.mktemp("bernoulli"))
    run.vae.eval()
    return run


def binarized_test_digits(run, count=64):
    return (run.dataset.test[:count] > 0.5).float()


def plain_torch_log_weights(vae, x, num_samples):
    """The log-weights written out in torch, from the encoder and decoder weights alone."""
    with torch.no_grad():
        loc, log_var = vae.encoder(x).chunk(2, dim=-1)
        std = torch.exp(0.5 * log_var)
        z = loc + std * torch.randn(num_samples, *loc.shape)
        logits = vae.decoder(z)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_qz = (-0.5 * ((z - loc) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    return log_px_z + log_pz - log_qz


def test_bernoulli_estimate_agrees_with_plain_torch(bernoulli_run):
    vae, x = bernoulli_run.vae, binarized_test_digits(bernoulli_run)
    layout = PlateLayout.of(vae.model, vae.guide, x)
    pyro.set_rng_seed(5)  # the same draws: the two computations agree to rounding
    with torch.no_grad():
        weights = log_weights(vae.model, vae.guide, x, num_particles=300, layout=layout)
    pyro.set_rng_seed(5)
    torch.testing.assert_close(weights, plain_torch_log_weights(vae, x, 300), rtol=1e-5, atol=1e-4)
    # independent draws: the mean log p(x) agrees within Monte Carlo error
    pyro.set_rng_seed(6)
    estimate = importance_sample(vae.model, vae.guide, x, num_samples=1000, psis=False)
    torch.manual_seed(7)
    plain = torch.logsumexp(plain_torch_log_weights(vae, x, 1000), dim=0) - math.log(1000)
    error = monte_carlo_error(estimate).pow(2).sum().sqrt() / x.shape[0]
    assert estimate.log_likelihood.mean().item() == pytest.approx(plain.mean().item(), abs=5 * error.item() + 0.02)


def test_expected_estimates_grow_with_k_towards_exact_log_px():
    ppca = PPCA(guide_shift=0.5, guide_variance_factor=3.0)
    vae, x = ppca.vae, ppca.sample_data(3000)  # the mean over many datapoints stands in for the expectation
    exact = ppca.exact_log_likelihood(x).mean().item()
    estimates = [
        log_likelihood(vae.model, vae.guide, x, num_samples=k, batch_size=1000, particle_batch_size=1000).mean().item()
        - exact
        for k in (1, 10, 100, 1000)
    ]
    # Burda et al., Theorem 1: E log p̂_K increases with K to log p(x); gaps here ≈ 3, 0.2, 0.02 nats
    assert estimates == sorted(estimates), estimates
    assert -0.01 < estimates[-1] < 0.003, estimates


def test_elbo_stays_below_the_estimate(bernoulli_run):
    vae, x = bernoulli_run.vae, binarized_test_digits(bernoulli_run)
    estimate = importance_sample(vae.model, vae.guide, x, num_samples=1000, psis=False)
    assert bool((estimate.elbo <= estimate.log_likelihood).all())
    assert evaluate_elbo(vae.model, vae.guide, x, num_particles=20)["elbo"] <= estimate.log_likelihood.mean().item()


def test_particle_chunks_give_identical_results(bernoulli_run):
    vae, x = bernoulli_run.vae, binarized_test_digits(bernoulli_run, 8)
    # 8 datapoints x 2 latents: each chunk's draws are whole 16-number blocks of torch's CPU normal
    # sampler, so chunks draw exactly the numbers one unchunked draw would
    pyro.set_rng_seed(3)
    whole = importance_sample(vae.model, vae.guide, x, num_samples=300, batch_size=8, particle_batch_size=300)
    pyro.set_rng_seed(3)
    chunked = importance_sample(vae.model, vae.guide, x, num_samples=300, batch_size=8, particle_batch_size=70)
    for name in ("log_likelihood", "elbo", "ess", "khat"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::ppl_vae.evaluation.DiagnosticWarning")
def test_shapes_per_datapoint_and_psis_warning(bernoulli_run):
    vae, x = bernoulli_run.vae, binarized_test_digits(bernoulli_run, 37)
    estimate = importance_sample(vae.model, vae.guide, x, num_samples=60, batch_size=10, particle_batch_size=25)
    for name in ("log_likelihood", "elbo", "ess", "khat"):
        assert getattr(estimate, name).shape == (37,)
    assert bool(((estimate.ess >= 1) & (estimate.ess <= 60)).all())
    assert estimate.bits_per_dim(64) == pytest.approx(-estimate.log_likelihood.mean().item() / (64 * math.log(2)))
    pyro.set_rng_seed(0)
    with pytest.warns(DiagnosticWarning, match="PSIS k̂ > 0.7") as warned:  # 21 samples: barely enough for a tail
        importance_sample(vae.model, vae.guide, x, num_samples=PSIS_MIN_SAMPLES)
    assert len(warned) == 1
    message = str(warned[0].message)
    assert "\n" not in message and message.endswith("use more importance samples or a better guide.")
    assert warned[0].filename == __file__  # reported at the caller


def test_one_importance_sample_is_the_elbo_with_no_khat():
    ppca = PPCA(guide_shift=0.3)
    vae, x = ppca.vae, ppca.sample_data(6)
    pyro.set_rng_seed(4)
    with pytest.warns(DiagnosticWarning, match=f"not computed: it needs at least {PSIS_MIN_SAMPLES} .* got 1,"):
        estimate = importance_sample(vae.model, vae.guide, x, num_samples=1)
    torch.testing.assert_close(estimate.log_likelihood, estimate.elbo)
    torch.testing.assert_close(estimate.ess, torch.ones(6, dtype=torch.float64))
    assert bool(torch.isinf(estimate.khat).all()) and estimate.khat.shape == (6,)
    # below the minimum, k̂ is inf as ArviZ's would be, without calling ArviZ (which fails on one sample)
    weights = torch.randn(PSIS_MIN_SAMPLES, 4, dtype=torch.float64)
    assert bool(torch.isinf(psis_khat(weights[:-1])).all()) and bool(torch.isfinite(psis_khat(weights)).all())
    with pytest.raises(EvaluationError, match=r"\(num_samples, datapoints\), got shape \(21,\)"):
        psis_khat(weights[:, 0])


@pytest.mark.parametrize("call, message", [
    (lambda vae, x: importance_sample(vae.model, vae.guide, x, num_samples=0), "num_samples must be .* >= 1, got 0"),
    (lambda vae, x: importance_sample(vae.model, vae.guide, x, num_samples=2.5), "num_samples .* got 2.5"),
    (lambda vae, x: importance_sample(vae.model, vae.guide, x, batch_size=True), "batch_size .* got True"),
    (lambda vae, x: log_likelihood(vae.model, vae.guide, x, particle_batch_size=-1), "particle_batch_size .* got -1"),
    (lambda vae, x: evaluate_elbo(vae.model, vae.guide, x, num_particles=0), "num_particles .* got 0"),
    (lambda vae, x: evaluate_elbo(vae.model, vae.guide, x, batch_size=0), "batch_size .* got 0"),
    (lambda vae, x: kl_per_dimension(vae.model, vae.guide, x, num_samples=0), "num_samples .* got 0"),
    (lambda vae, x: unit_activity(vae.model, vae.guide, x, batch_size="10"), "batch_size .* got '10'"),
    (lambda vae, x: marginal_kl(vae.model, vae.guide, x, batch_size=0), "batch_size .* got 0"),
    (lambda vae, x: to_inference_data(vae.model, vae.guide, x, num_samples=0), "num_samples .* got 0"),
], ids=["K=0", "K=2.5", "batch=True", "particles<0", "elbo-particles", "elbo-batch", "kl-samples", "activity-batch",
        "marginal-batch", "arviz-samples"])
def test_keyword_options_are_checked(call, message):
    ppca = PPCA()
    with pytest.raises(EvaluationError, match=message):
        call(ppca.vae, ppca.sample_data(4))


def test_latent_health_progress_bar_leaves_results_alone(capsys):
    ppca = PPCA()
    x = ppca.sample_data(300)
    pyro.set_rng_seed(8)
    quiet = latent_health(ppca.vae.model, ppca.vae.guide, x)
    assert "marginal KL" not in capsys.readouterr().err
    pyro.set_rng_seed(8)
    shown = latent_health(ppca.vae.model, ppca.vae.guide, x, progress=True)
    assert shown == quiet
    bar = capsys.readouterr().err
    assert "marginal KL" in bar and "300/300" in bar


@pytest.mark.filterwarnings("ignore::matplotlib.MatplotlibDeprecationWarning")  # inside ArviZ 0.23
def test_posterior_samples_as_inference_data():
    ppca = PPCA()
    x = ppca.sample_data(3)
    data = to_inference_data(ppca.vae.model, ppca.vae.guide, x, num_samples=4000)
    assert data.posterior["z"].shape == (1, 4000, 3, 2)
    summary = az.summary(data, kind="stats")
    exact_means = ((x - ppca.bias) @ ppca.gain.T).reshape(-1)
    torch.testing.assert_close(torch.tensor(summary["mean"].to_numpy()), exact_means, rtol=0, atol=0.05)
    axes = az.plot_posterior(data, coords={"datapoint": [0]})
    assert axes.size == 2
    plt.close("all")


@pytest.mark.filterwarnings("ignore::ppl_vae.evaluation.DiagnosticWarning")
def test_cli_eval_writes_eval_json(bernoulli_run, capsys):
    from ppl_vae.cli import main

    run_dir = bernoulli_run.out_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["test_kl_per_dim"]) == 2 and 0 <= metrics["test_active_units"] <= 2
    assert main(["eval", str(run_dir), "--num-samples", "50", "--device", "cpu"]) == 0
    results = json.loads((run_dir / "eval.json").read_text())
    assert {"log_likelihood", "elbo", "num_samples", "active_units", "kl_per_dim", "marginal_kl",
            "psis_khat_max", "seconds", "bits_per_dim", "mutual_information"} <= set(results)
    assert results["num_samples"] == 50 and results["elbo"] <= results["log_likelihood"] < 0
    assert (run_dir / "kl_per_dim.png").is_file()
    out = capsys.readouterr().out
    assert "nats/datapoint" in out and "bits/dimension" in out
    assert main(["eval", str(run_dir / "missing")]) == 2


def test_a_global_latent_is_refused():
    class GlobalOffsetVAE(VAE):
        """A latent shared by all datapoints: log p(x) no longer splits into one value per datapoint."""

        def model(self, x, kl_weight=1.0):
            pyro.sample("offset", dist.Normal(0.0, 1.0))
            super().model(x, kl_weight)

        def guide(self, x, kl_weight=1.0):
            pyro.sample("offset", dist.Normal(0.0, 0.1))
            super().guide(x, kl_weight)

    vae = PPCA().vae
    vae = GlobalOffsetVAE(vae.encoder, vae.decoder, vae.prior, vae.posterior, vae.likelihood)
    x = PPCA().sample_data(4)
    with pytest.raises(EvaluationError, match="'offset' is outside the 'data' plate"):
        log_likelihood(vae.model, vae.guide, x, num_samples=10)
    with pytest.raises(EvaluationError, match="'offset' is outside the 'data' plate"):
        latent_health(vae.model, vae.guide, x)


@pytest.mark.parametrize("parts", [{"posterior": FullNormal}, {"prior": GaussianMixture}])
def test_latent_health_of_non_factorized_parts_keeps_the_total_kl(parts):
    """A joint posterior or prior has no per-dimension KL: training and evaluation still report the total."""
    latent, data_dim = 3, 12
    prior, posterior = parts.get("prior", StandardNormal)(latent), parts.get("posterior", DiagonalNormal)(latent)
    vae = VAE(mlp(data_dim, posterior.num_params, hidden_sizes=[200]), mlp(latent, data_dim, hidden_sizes=[200]),
              prior, posterior, Bernoulli(data_dim))
    x = torch.bernoulli(torch.full((200, data_dim), 0.3))
    health = latent_health(vae.model, vae.guide, x)
    assert health["kl_per_dim"] is None and len(health["unit_activity"]) == 3
    assert health["kl"] == pytest.approx(evaluate_elbo(vae.model, vae.guide, x, num_particles=200)["kl"], abs=0.1)
    assert health["mutual_information"] == pytest.approx(health["kl"] - health["marginal_kl"])


@pytest.mark.filterwarnings("ignore::ppl_vae.evaluation.DiagnosticWarning")  # 30 samples: k̂ is above 0.7 for some
def test_eval_rebuilds_a_convolutional_run(tmp_path):
    """The image shape the conv nets need comes from the dataset, as it did in training."""
    from ppl_vae.config import from_dict
    from ppl_vae.runs import evaluate_run, fit

    config = from_dict({"model": {"encoder": "conv_encoder", "decoder": "conv_decoder"},
                        "train": {"epochs": 1, "progress": False}})
    run = fit(config, tmp_path / "conv")
    results = evaluate_run(tmp_path / "conv", num_samples=30, device="cpu", progress=False)
    assert results["elbo"] == pytest.approx(run.metrics["test_elbo"], abs=0.5)
    assert results["log_likelihood"] >= results["elbo"]
