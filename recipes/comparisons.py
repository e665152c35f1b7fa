"""The methods AEPO is compared with, on the same data, critic, behaviour policy and budgets.

``python -m energy_guidance.recipes.aepo --compare qgpo dps cql`` trains what they need (once,
resumably, in the run folder) and evaluates them beside AEPO:

qgpo  QGPO (Lu et al. 2023, arXiv 2304.12824): an intermediate-energy network of AEPO's size,
      trained with contrastive energy prediction (CEP) on ``support`` behaviour samples per state
      for ``qgpo_states`` data states (:func:`energy_guidance.baselines.train_contrastive_energy`)
      with the same energy, β, steps and learning rate as AEPO's network; it guides the same
      behaviour policy, best of N by Q.
dps   DPS-style training-free guidance: β·E(x̂0(x_t)) differentiated through the behaviour model
      (:func:`energy_guidance.baselines.dps_guidance`, no variance term), best of N by Q.
quadrature  training-free guidance by the Gaussian quadrature (7)
      (:class:`energy_guidance.quadrature.GaussianQuadrature`, the recipe's ``variance``): only
      values of Q at the nodes, no backward pass through the model; best of N by Q. Rule:
      :func:`quadrature_rule`.
cql   CQL's actor: a CQL critic (``--cql.*``) trained for ``cql_steps`` (default: ``critic_steps``)
      with the same batch size (when the run's critic is already CQL, its policy is evaluated
      anyway). The locomotion CPU preset gives it fewer steps: a CQL step evaluates Q on sampled
      actions for every state, so it costs several IQL steps (measured: docs/rl.md).

IDQL-style selection (unguided best of N by Q) and diffusion BC (the behaviour policy) are the
recipe's own ablations; SMC selection is ``--smc`` (all of them: :mod:`.policies`). The names
``--compare`` takes are :data:`.config.COMPARISONS`.
"""

from __future__ import annotations

import time
import typing
from collections.abc import Callable

import torch
from torch import Tensor, nn

from energy_guidance import IntermediateEnergyNet, distributed
from energy_guidance.baselines import draw_support, train_contrastive_energy
from energy_guidance.callables import Energy
from energy_guidance.checkpoints import load_tensors, save_tensors
from energy_guidance.schedulers import SchedulerLike
from energy_guidance.training import History

from .behaviour import NoiseMLP
from .config import AEPOConfig
from .inputs import Normalizer
from .runfolder import RunFolder
from .seeds import Seeds, batch_generator, generator
from .trainers import CRITICS, OnObservations, RecipeCritic, TrainableCritic
from .transitions import Transitions


def quadrature_rule(act_dim: int) -> str:
    """Gauss-Hermite (3 nodes) for one-dimensional actions, otherwise the cubature rule (2·d nodes):
    every node is a critic evaluation per sample and step, and 3^d nodes (729 at d = 6) would
    make evaluation hundreds of times slower than best of N."""
    return "gauss_hermite" if act_dim == 1 else "cubature"


def qgpo_support(
    folder: RunFolder,
    sampler: SchedulerLike,
    model: NoiseMLP,
    states: Tensor,
    act_dim: int,
    support: int,
    inference_steps: int,
    generator: torch.Generator,
) -> Tensor:
    """(N, M, d) behaviour samples for the N ``states``, drawn once and kept in the run folder."""
    path = folder.path / "qgpo_support.safetensors"
    if distributed.is_main() and (folder.finished("qgpo_support") is None or not path.exists()):
        t0 = time.perf_counter()
        with torch.no_grad():
            actions = draw_support(
                sampler,
                model,
                (act_dim,),
                support,
                cond=states,
                num_inference_steps=inference_steps,
                generator=generator,
            ).clamp(-1, 1)
        save_tensors(path, {"actions": actions.cpu().contiguous()})
        folder.finish("qgpo_support", seconds=time.perf_counter() - t0)
    return load_tensors(path, states.device)[0]["actions"]


def train_qgpo(
    config: AEPOConfig,
    seeds: Seeds,
    folder: RunFolder,
    data: Transitions,
    model: NoiseMLP,
    train_scheduler: SchedulerLike,
    sampler: SchedulerLike,
    energy: Energy,
) -> IntermediateEnergyNet:
    """QGPO's CEP energy network for ``config``."""
    device = data.observations.device
    g = generator(seeds.qgpo_support)  # the same states and support on every process
    idx = torch.randperm(len(data), generator=g)[: config.qgpo_states].to(device)
    states = data.observations[idx]
    with distributed.main_first():  # rank 0 draws and stores the support, the others load it
        support = qgpo_support(
            folder, sampler, model, states, data.act_dim, config.qgpo_support, config.inference_steps, g
        )
    g = batch_generator(seeds.qgpo_batches)
    torch.manual_seed(seeds.qgpo)
    network = IntermediateEnergyNet(
        data.act_dim, data.obs_dim, hidden=config.energy_hidden, beta=config.beta
    ).to(device)
    train_contrastive_energy(
        network,
        train_scheduler,
        energy,
        support,
        states,
        steps=config.energy_steps,
        # support sets per step: batch_size noised samples in all, over the processes
        batch_size=max(distributed.local_batch_size(config.batch_size) // config.qgpo_support, 1),
        lr=config.energy_lr,
        generator=g,
        progress=config.progress,
        checkpoint_dir=folder.checkpoints,
        name="qgpo",
        checkpoint_every=config.checkpoint_every,
    )
    return network.eval().requires_grad_(False)


def train_cql(
    config: AEPOConfig,
    seeds: Seeds,
    phase: Callable[..., History],
    data: Transitions,
    normalizer: Normalizer,
) -> RecipeCritic:
    """A CQL critic with ``config.cql`` for ``config.cql_steps`` (0: ``critic_steps``; phase
    ``critic_cql``), reading the observations ``config.critic_observations`` says, as the
    recipe's critic does (:func:`.aepo.train_critic`)."""
    device = data.observations.device
    torch.manual_seed(seeds.cql)
    module = new_critic("cql", data.obs_dim, data.act_dim, config.cql, device)
    critic = reading_observations(module, config, normalizer)
    g = batch_generator(seeds.cql_batches)
    batch = distributed.local_batch_size(config.batch_size)
    phase(
        "critic_cql",
        lambda step: critic.update(data.sample(batch, g), g),
        config.cql_steps or config.critic_steps,
        modules={"critic": module},
        optimizers=critic.optimizers,
        generator=g,
    )
    return frozen(critic)


def new_critic(
    name: str, obs_dim: int, act_dim: int, settings: object, device: torch.device
) -> TrainableCritic:
    """``CRITICS[name](obs_dim, act_dim, settings)`` on ``device``.

    A trainable critic is an ``nn.Module`` constructed so (recipes/trainers.py), which its protocol
    does not declare yet; the casts here and in :func:`frozen` say it to the type checker."""
    make = typing.cast(Callable[[int, int, object], nn.Module], CRITICS[name])
    return typing.cast(TrainableCritic, make(obs_dim, act_dim, settings).to(device))


def reading_observations(critic: TrainableCritic, config: AEPOConfig, normalizer: Normalizer) -> RecipeCritic:
    """``critic`` reading the observations ``config.critic_observations`` names: the recipe's
    standardised states as they are, or "raw" ones through :class:`.trainers.OnObservations`
    (``normalizer.inverse``). Checkpoint ``critic`` itself: its weights are the same either way."""
    if config.critic_observations == "raw":
        return OnObservations(critic, normalizer.inverse)
    return critic


def frozen(critic: RecipeCritic) -> RecipeCritic:
    """``critic`` in evaluation mode without gradients (a trained critic, for the energy)."""
    typing.cast(nn.Module, critic).eval().requires_grad_(False)
    return critic
