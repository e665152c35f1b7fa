"""distributed.py and training.py under torchrun: two CPU processes (gloo) against one.

One ``torchrun --standalone --nproc-per-node 2`` launch (a free port; this module is the worker)
runs every two-process scenario and saves what each rank ends with; the tests compare that with
each other, with the checkpoint rank 0 wrote, and with the same scenario run here in one process.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from energy_guidance import distributed
from energy_guidance.checkpoints import load_tensors
from energy_guidance.recipes.cql import CQL
from energy_guidance.recipes.iql import IQL
from energy_guidance.training import fit, gradient_step, train
from tests.recipes.random_transitions import random_transitions

ROOT = Path(__file__).resolve().parents[2]
NOISE = 0.5  # the regression's noise: σ² = 0.25 is the least loss any network can reach


class Interrupted(Exception):
    pass


# --- the scenarios, each run by both ranks of the worker (and some here, in one process) --------------


def stochastic_fit(directory, interrupt_at=None, steps=40):
    """Regress an MLP on fresh noisy batches (global batch 32), checkpointing every 10 steps."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    g = torch.Generator().manual_seed(distributed.rank_seed(1))
    losses = []

    def loss():
        if len(losses) == interrupt_at:
            raise Interrupted
        x = torch.randn(distributed.local_batch_size(32), 3, generator=g)
        value = (net(x)[:, 0] - x.sum(1) - 0.1 * torch.randn(len(x), generator=g)).pow(2).mean()
        losses.append(value.item())
        return value

    history = fit(net, loss, steps=steps, lr=1e-2, generator=g, checkpoint_dir=directory,
                  checkpoint_every=10, log_every=5, progress=False)  # fmt: skip
    return net, history, losses


def full_batch_data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 5, generator=g, dtype=torch.float64)
    y = x @ torch.randn(5, 3, generator=g, dtype=torch.float64) + 0.1 * torch.randn(
        64, 3, generator=g, dtype=torch.float64
    )
    return x, y


def full_batch_sgd(steps=30, lr=0.1, trace=None):
    """Least squares by plain SGD on a deterministic batch of 64, float64; each of the n processes
    takes its contiguous 64/n rows. ``trace`` (one process) collects what the error bound needs."""
    x, y = full_batch_data()
    b = distributed.local_batch_size(len(x))
    x, y = x[distributed.rank() * b :][:b], y[distributed.rank() * b :][:b]
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def update(step):
        loss = (model(x) - y).pow(2).sum(1).mean()
        if trace is not None:  # the bound's terms at θ_t: see test_half_batches_on_two_processes...
            with torch.no_grad():
                w, bias = model.weight, model.bias
                magnitude = x.abs() @ w.abs().T + bias.abs() + y.abs()  # ≥ |r_i| entrywise, (B, 3)
                xt = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1).abs()
                a = 2 / len(x) * magnitude.T @ xt  # (3, 6): Σ_i (|W||x_i| + |b| + |y_i|)|x̃_i|ᵀ·2/B
                theta = torch.cat([w.reshape(-1), bias])
            value = loss.detach()
            gradient_step(optimizer, loss)
            grad = torch.cat([model.weight.grad.reshape(-1), model.bias.grad])
            trace.append((a.norm().item(), theta.norm().item(), grad.norm().item()))
            return {"loss": value.item()}
        return {"loss": gradient_step(optimizer, loss)}

    train(update, steps, modules={"model": model}, optimizers={"model": optimizer}, progress=False)
    return model


def unused_parameters():
    """w is used by both processes, u by rank 1 only, z by neither; one SGD step with lr 1."""
    w, u, z = (nn.Parameter(torch.zeros(())) for _ in range(3))
    optimizer = torch.optim.SGD([w, u, z], lr=1.0)
    r = distributed.rank()
    loss = w * (r + 1) + (u * 2 if r == 1 else 0)
    gradient_step(optimizer, loss)
    return {"w": w.item(), "u": u.item(), "z_grad": z.grad}


def regression(seed, eval_seed, steps=800, global_batch=64, noise=NOISE, lr=1e-2):
    """A small stochastic regression, y = sin(x₁) + x₂²/2 + noise, Adam from one initialisation
    with the batches of ``seed``; the final loss on 64 fresh evaluation batches of 256 (mean and
    standard error) and the loss at initialisation."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    g = torch.Generator().manual_seed(distributed.rank_seed(seed))
    b = distributed.local_batch_size(global_batch)

    def draw(n, generator):
        x = torch.rand(n, 2, generator=generator) * 4 - 2
        y = torch.sin(x[:, 0]) + x[:, 1].pow(2) / 2
        return x, y + noise * torch.randn(n, generator=generator)

    def loss():
        x, y = draw(b, g)
        return (net(x)[:, 0] - y).pow(2).mean()

    def evaluate():
        e = torch.Generator().manual_seed(eval_seed)
        with torch.no_grad():
            means = torch.stack(
                [(net(x)[:, 0] - y).pow(2).mean() for x, y in (draw(256, e) for _ in range(64))]
            )
        return means.mean().item(), (means.std() / math.sqrt(len(means))).item()

    initial, _ = evaluate()
    fit(net, loss, steps=steps, lr=lr, generator=g, log_every=50, progress=False)
    final, se = evaluate()
    return {"loss": final, "se": se, "initial": initial}


def critic_updates(cls, directory):
    """A critic trained 15 steps; each rank starts from a different initialisation on purpose."""
    torch.manual_seed(100 + distributed.rank())
    config = cls.Config(hidden=32)
    critic = cls(3, 2, config)
    data = random_transitions(n=512)
    g = torch.Generator().manual_seed(distributed.rank_seed(7))
    batch_sums = []

    def update(step):
        batch = data.sample(distributed.local_batch_size(64), g)
        batch_sums.append(batch.rewards.sum().item())
        return critic.update(batch, g)

    initial = {k: v.clone() for k, v in critic.state_dict().items()}
    train(update, 15, modules={"critic": critic}, optimizers=critic.optimizers, generator=g,
          checkpoint_dir=directory, checkpoint_every=5, log_every=5, progress=False)  # fmt: skip
    return {"initial": initial, "final": critic.state_dict(), "batch_sums": batch_sums}


def worker(out: Path) -> None:
    """What each of the two processes runs (``python -m tests.energy_guidance.test_distributed OUT``)."""
    torch.set_num_threads(1)
    with distributed.session("cpu"):
        assert distributed.world_size() == 2
        r = distributed.rank()
        result = {}
        net, history, losses = stochastic_fit(out / "fit")
        result["fit"] = {"state": net.state_dict(), "history": history, "losses": losses}
        with pytest.raises(Interrupted):
            stochastic_fit(out / "resumed", interrupt_at=27)
        net, history, losses = stochastic_fit(out / "resumed")
        result["resumed"] = {"state": net.state_dict(), "history": history, "calls": len(losses)}
        result["full_batch"] = full_batch_sgd().state_dict()
        result["unused"] = unused_parameters()
        result["regression"] = regression(seed=0, eval_seed=2000)
        result["iql"] = critic_updates(IQL, out / "iql")
        result["cql"] = critic_updates(CQL, out / "cql")
        torch.save(result, out / f"rank{r}.pt")


# --- the two-process run -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' results (and the folder their checkpoints are in) from one torchrun launch."""
    out = tmp_path_factory.mktemp("torchrun")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "tests.energy_guidance.test_distributed", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)], out


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_both_ranks_end_equal_to_the_checkpoint_rank_0_wrote(ranks):
    (zero, one), out = ranks
    assert _equal(zero["fit"]["state"], one["fit"]["state"])  # same averaged steps, bit for bit
    tensors, _ = load_tensors(out / "fit" / "fit-40.safetensors")
    assert _equal({f"module.{k}": v for k, v in zero["fit"]["state"].items()}, tensors)
    # Rank 0 alone wrote: the two newest checkpoints, no other file (a second writer's temporary).
    names = {f"fit-{s}.{e}" for s in (30, 40) for e in ("safetensors", "pt", "json")}
    assert {p.name for p in (out / "fit").iterdir()} == names
    states = torch.load(out / "fit" / "fit-40.pt", weights_only=True)
    assert torch.equal(states["generator"], states["rank_generators"][0])
    assert not torch.equal(states["rank_generators"][0], states["rank_generators"][1])


def test_the_logged_losses_are_averaged_over_the_ranks(ranks):
    (zero, one), _ = ranks
    a, b = zero["fit"]["losses"], one["fit"]["losses"]
    assert a != b  # the ranks drew different batches
    assert zero["fit"]["history"] == one["fit"]["history"]
    expected = [(sum(a[i : i + 5]) / 5 + sum(b[i : i + 5]) / 5) / 2 for i in range(0, 40, 5)]
    # float64 means of float32 losses: the only difference is the order of two float64 additions
    assert zero["fit"]["history"]["loss"] == pytest.approx(expected, rel=1e-14)


def test_a_two_process_run_resumes_exactly(ranks):
    (zero, one), _ = ranks
    for rank in (zero, one):
        assert rank["resumed"]["calls"] == 20  # steps 20..39, from the checkpoint at step 20
        assert _equal(rank["resumed"]["state"], rank["fit"]["state"])  # each rank's own generator
        assert rank["resumed"]["history"] == rank["fit"]["history"]


def test_one_process_reads_a_checkpoint_written_by_two(ranks, tmp_path):
    (zero, _), out = ranks
    shutil.copytree(out / "fit", tmp_path / "fit")
    net, history, losses = stochastic_fit(tmp_path / "fit")  # finished: only loads
    assert losses == [] and _equal(net.state_dict(), zero["fit"]["state"])
    assert history == zero["fit"]["history"]


def test_half_batches_on_two_processes_step_as_the_whole_batch_on_one(ranks):
    """Each process's gradient is the mean over its 32 rows; their average is the mean over the 64,
    the one-process gradient, up to the order of the float64 sums. Bound: a computed gradient
    entry differs from the exact one by at most γ_{B+8}·A, γ_n = nu/(1 − nu), u = 2⁻⁵³, where A =
    (2/B)Σ_i (|W||x_i| + |b| + |y_i|)|x̃_i| bounds the terms summed (residuals of 6 products, then
    B terms), so the two computed gradients differ by at most 2γ_{B+8}‖A‖ in norm. Gradient descent
    on least squares with ηλ_max(H) ≤ 2 is non-expansive, so these errors add up without growing,
    plus the rounding of the update θ − ηg itself (2u(‖θ‖ + η‖g‖) per step)."""
    (zero, one), _ = ranks
    trace, lr, steps = [], 0.1, 30
    single = full_batch_sgd(steps, lr, trace)
    x, _ = full_batch_data()
    xt = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    assert lr * torch.linalg.eigvalsh(2 / len(x) * xt.T @ xt).max() <= 2  # non-expansive
    u = 2.0**-53
    gamma = (len(x) + 8) * u / (1 - (len(x) + 8) * u)
    tolerance = sum(lr * 2 * gamma * a + 2 * u * (theta + lr * g) for a, theta, g in trace)
    flat = torch.cat([p.detach().reshape(-1) for p in single.parameters()])
    for rank in (zero, one):
        two = torch.cat([rank["full_batch"]["weight"].reshape(-1), rank["full_batch"]["bias"]])
        assert (two - flat).norm() <= tolerance
    # The check has power: every step moved the parameters by far more than the tolerance (a
    # wrong average, e.g. a sum or one rank's half alone, would be off by a step's size).
    assert min(lr * g for _, _, g in trace) > 1e6 * tolerance


def test_a_parameter_without_gradient_on_one_rank_counts_as_zero_there(ranks):
    (zero, one), _ = ranks
    for rank in (zero, one):
        assert rank["unused"]["w"] == -1.5  # −(1 + 2)/2: the mean of the ranks' gradients
        assert rank["unused"]["u"] == -1.0  # −(0 + 2)/2: rank 0 had no gradient
        assert rank["unused"]["z_grad"] is None  # no gradient anywhere: the optimizer skips it


@pytest.mark.parametrize("name", ["iql", "cql"])
def test_critic_updates_keep_the_ranks_identical(ranks, name):
    (zero, one), out = ranks
    assert zero[name]["batch_sums"] != one[name]["batch_sums"]  # different batches ...
    assert not _equal(zero[name]["initial"], one[name]["initial"])  # ... different initialisations
    assert _equal(zero[name]["final"], one[name]["final"])  # ... the same critic (q_target included)
    assert not any(torch.equal(zero[name]["initial"][k], v) for k, v in zero[name]["final"].items()
                   if k.startswith("q."))  # fmt: skip
    tensors, _ = load_tensors(out / name / "training-15.safetensors")
    assert _equal({f"critic.{k}": v for k, v in zero[name]["final"].items()}, tensors)


def test_two_processes_reach_the_loss_of_one_at_equal_global_batch(ranks):
    """The measured goal. Both runs start from the same network and see a global batch of 64 per
    step (2 × 32 against 1 × 64); they differ only in which examples they drew. Each final loss is
    measured on its own 64 fresh evaluation batches, so the difference of the two measurements has
    standard error √(se₁² + se₂²) (≈ 0.0044): within 3 of them. The training's own run-to-run
    spread is far smaller here (one process, 5 batch seeds, one evaluation set: 0.2529 to 0.2536),
    so a real difference between one and two processes is what would exceed it."""
    (zero, one), _ = ranks
    two = zero["regression"]
    assert one["regression"] == two
    single = regression(seed=0, eval_seed=1000)
    print(f"\n1 process: {single['loss']:.4f} ± {single['se']:.4f}; "
          f"2 processes: {two['loss']:.4f} ± {two['se']:.4f} (initial {single['initial']:.3f})")  # fmt: skip
    for run in (single, two):  # both learned 95 % of what can be learned; none beat the noise
        assert run["loss"] - NOISE**2 < 0.05 * (run["initial"] - NOISE**2)
        assert run["loss"] > NOISE**2 - 3 * run["se"]
    assert abs(single["loss"] - two["loss"]) <= 3 * math.hypot(single["se"], two["se"])


# --- one process: nothing changes ----------------------------------------------------------------------


def test_without_torchrun_every_helper_answers_for_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched()
    with distributed.session("cpu") as device:
        assert device == torch.device("cpu") and not distributed.initialized()
        assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
        assert not distributed.active()
        distributed.barrier()
        with distributed.main_first():
            pass
        assert distributed.broadcast_object({"a": 1}) == {"a": 1}
        assert distributed.gather_objects(3) == [3]
        assert distributed.average({"loss": 0.25}) == {"loss": 0.25}
        assert distributed.local_batch_size(64) == 64
        assert distributed.rank_seed(5) == 5


def test_local_batch_size_must_divide(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    assert distributed.local_batch_size(96) == 32
    with pytest.raises(ValueError, match="global batch size 64 is not divisible by the 3 processes"):
        distributed.local_batch_size(64)


def test_rank_seeds_are_distinct_streams(monkeypatch):
    seeds = []
    for r in range(4):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        seeds.append(distributed.rank_seed(5))
    assert seeds[0] == 5
    low = {s % 2**32 for s in seeds}  # torch's CPU generator uses only the low 32 bits
    assert len(low) == 4 and not low & {5 + k for k in range(1, 10)}  # nor the next phases' seeds
    draws = {torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(s)).item() for s in seeds}
    assert len(draws) == 4


def test_a_single_process_checkpoint_keeps_its_format(tmp_path):
    stochastic_fit(tmp_path)
    states = torch.load(tmp_path / "fit-40.pt", weights_only=True)
    assert set(states) == {"optimizers", "lr_schedulers", "generator"}


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
