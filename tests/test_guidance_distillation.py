"""Score distillation on an analytic prior: a Gaussian data distribution whose optimal denoiser is closed-form.

Data ``x0 ~ N(mu_branch, sigma² I)`` per condition branch. Then ``x_t ~ N(√ᾱ mu, ᾱσ² + 1 − ᾱ)`` and the optimal
epsilon predictor is ``eps(x_t) = √(1 − ᾱ)·(x_t − √ᾱ·mu) / (ᾱσ² + 1 − ᾱ)``; nothing here uses a network.
"""

from __future__ import annotations

import pytest
import torch

from gen3d.backend.guidance.distillation import CSD, SDS, X0Reconstruction, loss_from_grad, weight
from gen3d.backend.guidance.priors.base import Condition, DiffusionPrior

SIGMA = 0.1
SHAPE = (2, 4, 4, 4)


class GaussianPrior(DiffusionPrior):
    """Identity "VAE"; the branch's input ``mu`` is the mode of its data distribution."""

    guidance_scale = 1.0

    def __init__(self, num_frames: int = 1):
        from diffusers import DDIMScheduler

        sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
        super().__init__(None, None, sched, "cpu", torch.float32)
        self.num_frames = num_frames

    def encode(self, images):
        return images.float()

    def _eps(self, x, t, mu):
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * SIGMA ** 2 + 1 - a)


def _condition(mu_cond, mu_neg, mu_null):
    return Condition({"cond": {"mu": mu_cond}, "negative": {"mu": mu_neg}, "null": {"mu": mu_null}})


def test_loss_gradient_is_grad_over_batch():
    z = torch.randn(SHAPE, requires_grad=True)
    g = torch.randn(SHAPE)
    out = loss_from_grad(z, g, "loss_x")
    out["loss_x"].backward()
    torch.testing.assert_close(z.grad, g / SHAPE[0])
    assert out["grad_norm"] == pytest.approx(float(g.norm()))


@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia3d"])
def test_sds_moves_an_image_to_the_mode(weighting):
    torch.manual_seed(0)
    prior = GaussianPrior()
    mu = torch.full(SHAPE, 0.6)
    mu[:, 1] = -0.3
    cond = _condition(mu, torch.zeros(SHAPE), torch.zeros(SHAPE))
    x = torch.zeros(SHAPE).uniform_(-1, 1).requires_grad_(True)
    start = (x - mu).norm().item()
    opt = torch.optim.Adam([x], lr=0.02)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        t = torch.randint(20, 981, (SHAPE[0],), generator=g)
        loss = prior(x, cond, t, SDS(guidance_scale=1.0, weighting=weighting))["loss_sds"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (x - mu).norm().item() < 0.1 * start


def test_sds_expected_gradient_points_away_from_the_mode():
    """E_eps[eps_hat - eps] = √ᾱ√(1−ᾱ)(x − mu)/(ᾱσ² + 1 − ᾱ) for the Gaussian: check with many noise draws."""
    prior = GaussianPrior()
    mu, x = torch.zeros(1, 4, 8, 8), torch.full((1, 4, 8, 8), 0.5)
    t = torch.tensor([400])
    a = prior.alphas_cumprod[400]
    grads = []
    for seed in range(200):
        z = x.clone().requires_grad_(True)
        torch.manual_seed(seed)
        prior(z, _condition(mu, mu, mu), t, SDS(guidance_scale=1.0, weighting="uniform"))["loss_sds"].backward()
        grads.append(z.grad)
    mean = torch.stack(grads).mean()
    expected = a.sqrt() * (1 - a).sqrt() * 0.5 / (a * SIGMA ** 2 + 1 - a)
    assert float(mean) == pytest.approx(float(expected), rel=0.05)


def test_csd_equals_the_classifier_term_of_sds():
    prior = GaussianPrior()
    torch.manual_seed(1)
    mu_c, mu_u = torch.randn(SHAPE), torch.randn(SHAPE)
    cond = _condition(mu_c, mu_u, mu_u)  # no negative prompt: negative == null
    z0 = torch.randn(SHAPE)
    t = torch.tensor([300, 700])
    noise = torch.randn(SHAPE)
    scale = 7.5

    def grad_of(method):
        z = z0.clone().requires_grad_(True)
        out = prior(z, cond, t, method, noise=noise)
        next(v for k, v in out.items() if k.startswith("loss_")).backward()
        return z.grad

    classifier_term = grad_of(SDS(scale, "sds")) - grad_of(SDS(0.0, "sds"))
    csd = grad_of(CSD(scale, "sds", u_start=0.0, u_end=0.0, n_start=-1.0, n_end=-1.0))
    torch.testing.assert_close(csd, classifier_term, rtol=1e-4, atol=1e-5)
    # and the classifier term has no noise residual: it equals w·s·(eps_c − eps_u) analytically
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
    eps = lambda mu: (1 - a).sqrt() * (x_t - a.sqrt() * mu) / (a * SIGMA ** 2 + 1 - a)  # noqa: E731
    torch.testing.assert_close(csd, weight("sds", a) * scale * (eps(mu_c) - eps(mu_u)) / SHAPE[0],
                               rtol=1e-4, atol=1e-5)


def test_csd_official_negative_prompt_annealing():
    csd = CSD()
    assert csd.coefficients(0.0) == (1.0, 0.0, -1.0)  # pure classifier score eps(y) - eps(null)
    assert csd.coefficients(0.25) == pytest.approx((1.0, -0.5, -0.5))
    assert csd.coefficients(0.5) == (1.0, -1.0, 0.0)  # eps(y) - eps(y_neg) from half-way
    assert csd.coefficients(1.0) == (1.0, -1.0, 0.0)


def test_x0_reconstruction_target_is_the_denoised_mode():
    """Without CFG or rescale the target is the analytic posterior mean E[x0 | x_t], which moves towards mu."""
    prior = GaussianPrior(num_frames=2)
    mu = torch.full(SHAPE, 0.4)
    z = torch.zeros(SHAPE, requires_grad=True)
    noise = torch.randn(SHAPE)
    t = torch.tensor([200, 200])
    out = prior(z, _condition(mu, mu, mu), t, X0Reconstruction(guidance_scale=1.0, std_rescale=0.0), noise=noise)
    out["loss_sds"].backward()
    a = prior.alphas_cumprod[200]
    x_t = (1 - a).sqrt() * noise
    posterior_mean = mu + a.sqrt() * SIGMA ** 2 * (x_t - a.sqrt() * mu) / (a * SIGMA ** 2 + 1 - a)
    torch.testing.assert_close(z.grad, (z.detach() - posterior_mean) / SHAPE[0], rtol=1e-4, atol=1e-5)


def test_x0_reconstruction_std_rescale_matches_the_unguided_std_per_group():
    prior = GaussianPrior(num_frames=2)
    torch.manual_seed(3)
    mu_c, mu_u = torch.randn(SHAPE), torch.randn(SHAPE) * 3
    z = torch.randn(SHAPE, requires_grad=True)
    t = torch.tensor([500, 500])
    noise = torch.randn(SHAPE)
    out = prior(z, _condition(mu_c, mu_u, mu_u), t, X0Reconstruction(guidance_scale=5.0, std_rescale=1.0),
                noise=noise)
    out["loss_sds"].backward()
    target = z.detach() - z.grad * SHAPE[0]
    a = prior.alphas_cumprod[500]
    x_t = a.sqrt() * z.detach() + (1 - a).sqrt() * noise
    eps_c = (1 - a).sqrt() * (x_t - a.sqrt() * mu_c) / (a * SIGMA ** 2 + 1 - a)
    x0_c = (x_t - (1 - a).sqrt() * eps_c) / a.sqrt()
    assert float(target.std()) == pytest.approx(float(x0_c.std()), rel=1e-3)  # one group of 2 views = the batch


def test_csd_normalised_gradient_has_unit_norm():
    prior = GaussianPrior()
    torch.manual_seed(2)
    cond = _condition(torch.randn(SHAPE), torch.randn(SHAPE), torch.randn(SHAPE))
    z = torch.randn(SHAPE, requires_grad=True)
    out = prior(z, cond, torch.tensor([100, 900]), CSD(normalize=True), progress=0.1)
    out["loss_csd"].backward()
    assert float(out["grad_norm"]) == pytest.approx(1.0, rel=1e-4)
    assert float((z.grad * SHAPE[0]).norm()) == pytest.approx(1.0, rel=1e-4)
