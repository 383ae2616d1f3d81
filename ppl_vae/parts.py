"""Which registry each part of the config is looked up in."""

from ppl_vae.guides import POSTERIORS
from ppl_vae.likelihoods import LIKELIHOODS
from ppl_vae.nets import NETS
from ppl_vae.objectives import SCHEDULES
from ppl_vae.priors import PRIORS

REGISTRIES = {
    "model.encoder": NETS,
    "model.decoder": NETS,
    "model.prior": PRIORS,
    "model.posterior": POSTERIORS,
    "model.likelihood": LIKELIHOODS,
    "objective.beta": SCHEDULES,
}
