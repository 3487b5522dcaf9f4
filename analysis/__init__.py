"""Charts of a vaesweep study, from its DataFrames (``vaesweep.study.tables.load_study(path)``).

Every chart function returns a ``Chart``: a matplotlib Figure (shown inline in a notebook), a
one-sentence reading, and its tables; a chart the study cannot support comes back without a
figure, its reading saying why. ``python -m vaesweep report runs/<name>`` puts them all on one page.

    t = load_study("runs/capacity")
    active_vs_latent_dim(t.trials)                  # capacity, onset of sparsity marked
    onset_of_sparsity(t.trials, by=["arch", "lam"])
    law_heatmap(t.trials, lambda_star=None)         # Sec. 4 variance law over lambda x latent_dim
    table1(t.latents, chosen)                       # Table 1 for chosen trials (rows of t.trials)
    var_mu_history(chosen, t.latent_history, t.epochs, t.trace, t.latents)   # Fig. 2
    fid_chart(t.trials)                             # FID-proxy against lambda and latent_dim
    analysis.samples.sample_grids("runs/capacity", chosen, t.latents)   # Fig. 3, from the trials' checkpoints
    gain_vs_kl(t.latents, t.trials)                 # Sec. 5
    paper_chart(t.trials, t.latents, t.epochs)      # the paper's numbers beside the study's (latent 16, λ 1)
    settled.split(t.trials)                         # (settled trials, unsettled ones): vaesweep/engine/settle.py

Only trials whose collapse had settled count for the onset of sparsity, the law heatmap and
lambda*; every chart marks the others. ``analysis.samples`` (Fig. 3) loads the trials' checkpoints, so it
needs torch and is imported by name; the rest reads tables only, so ``status`` prints a study's answers
(``analysis.answers``) without torch.
"""

from . import settled
from .capacity import active_vs_latent_dim, onset_of_sparsity
from .chart import Chart
from .fid import fid_chart
from .latents import gain_vs_kl, table1, var_mu_history
from .law import law_heatmap
from .paper import paper_chart

__all__ = [
    "Chart",
    "active_vs_latent_dim",
    "onset_of_sparsity",
    "law_heatmap",
    "table1",
    "var_mu_history",
    "fid_chart",
    "gain_vs_kl",
    "paper_chart",
    "settled",
]
