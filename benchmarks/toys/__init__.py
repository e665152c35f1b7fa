"""Guidance estimators and SMC against exact targets on QGPO's six 2-D toy data sets.

    python -m benchmarks.toys                      # 6 data sets × β ∈ {3, 10, 20}, both parts
    python -m benchmarks.toys --quick              # smoke run: one data set, one β, tiny sizes
    python -m benchmarks.toys --datasets moons --betas 10 --parts exact --train-seconds 10
    python -m benchmarks.toys --parts exact --methods exact --twists dps tw2_dv exact \
        --smc-protocol populations --smc-k 64 --num-samples 500   # the SMC goal, one output per population

Files: config.py (the settings), methods.py (the samplers by name: the registry, each with its
description and factory), training.py (the learned estimators at equal wall time), smc.py (the
SMC protocols), scoring.py (distances to the target, floors), run.py (the two parts and the
outputs), report.py (tables, goals, plots). ``--help`` lists every sampler and twist.

Part 1, **exact noise model** (``--parts exact``): the model is the *exact* noise model of an
empirical set of ``num_data`` points (:class:`~energy_guidance.testing.EmpiricalNoiseModel`,
a memorising diffusion model): no learned confound, and an exact target. The tilted target
q·exp(-β·E)/Z of an empirical q is the same points with weights softmax_i(-β·E(x_i)); metrics
compare against that weighted set itself. Samplers (all DDPM, ``num_inference_steps`` steps):
those of :data:`~benchmarks.toys.methods.METHODS`, and ``smc_<twist>_K<K>``:
:func:`energy_guidance.smc_sample` with a twist of :data:`~benchmarks.toys.methods.TWISTS`.

The learned estimators get **equal training wall time**, ``--train-seconds`` each, everything
they need counted: the variance table for the data_var targets, CEP's support pool. The number
of steps is calibrated from a timed pilot (``train_*(steps=0)`` for the set-up, then
``pilot_steps`` steps, on throw-away copies) so that set-up + steps fit the budget; the run then
uses the full cosine learning-rate schedule over those steps. The achieved steps and seconds are
reported.

SMC has two protocols (``--smc-protocol``):

    budget       (default) an **equal particle budget**: each (twist, K) uses ``smc_particles``
                 particles in B = ``smc_particles``/K populations (``resample=False``), scored on
                 the pooled weighted particles (each population's normalised weights / B): the
                 distribution a ``resample=True`` output is drawn from, with less noise than B
                 single draws, but at K = 64 only 12 populations, collapsed onto few lineages.
    populations  **one output per population**, the contract of ``smc_sample``: ``num_samples``
                 outputs, each the ``resample=True`` draw of its own population of K particles,
                 scored like any sampler's ``num_samples`` samples (same floors, same target).
                 It costs K particles per output; populations are independent, so they run in
                 calls of at most ``smc_chunk`` particles (one generator through the calls).

SMC steps DDPM with ``--smc-spacing`` (default "leading", as every other sampler; "trailing"
is what ``smc_sample``'s docstring recommends) on the same model and estimator.

Reported beside the distances: wall time, the mean and minimum (over steps) ESS/K, the number of
resampling events per population, the error of the mean log Ẑ against the exact
log Z = log mean_i exp(-β·E(x_i)), and the error of the mean label. The SMC goal is counted on
the protocol that ran.

Part 2, **a learned model** (``--parts learned``): a small ε-prediction MLP
(:class:`benchmarks.models.EpsMLP`) fitted to the same data (``energy_guidance.training.fit``);
its target is *its own* tilted distribution, a large pool of its unguided samples weighted by
softmax(-β·E) (the ESS of those weights is reported). The training-free estimators and SMC with
``learned_twists`` run against it; divergence (non-finite samples) is reported as ``div``.

Metrics: sliced Wasserstein-2 (SW2, 128 fixed directions, quantiles on a 4096-point grid) and
MMD² (sum of Gaussian kernels, bandwidths 0.2, 0.5, 1; unbiased in the samples, exact in the
weighted target), both :class:`energy_guidance.testing.WeightedTarget`'s. Floors: ``resampled``
is the mean ± s.d. over ``floor_repeats`` sets of ``num_samples`` i.i.d. target draws (the s.d.
is the noise of any single score); ``two_draws`` the SW2 between two such independent sets.
Outputs (written atomically) in ``out``: results.md, results.json, toys_beta{β}.png and
toys_learned_beta{β}.png (rows = data sets, columns = samplers).
"""

from .config import Config, configure
from .methods import LEARNED, LEARNED_MODEL_METHODS, LEARNED_TWISTS, METHODS, TRAINING_FREE, TWISTS
from .report import goals, metric_table, render
from .run import main

__all__ = [
    "LEARNED",
    "LEARNED_MODEL_METHODS",
    "LEARNED_TWISTS",
    "METHODS",
    "TRAINING_FREE",
    "TWISTS",
    "Config",
    "configure",
    "goals",
    "main",
    "metric_table",
    "render",
]
