"""The AEPO recipe end to end on a tiny data set: its CLI, resuming (interrupt, kill -9),
re-evaluation, refusals, and damaged files in its run folder."""

import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import energy_guidance.recipes.aepo as aepo
from energy_guidance.checkpoints import CorruptFileError, checkpoint_steps, load_tensors, read_json
from energy_guidance.recipes.aepo import format_scores, run
from energy_guidance.recipes.config import parse_args, resolve_device
from energy_guidance.recipes.inputs import load_inputs
from energy_guidance.recipes.iql import IQL, IQLConfig
from energy_guidance.recipes.runfolder import ConfigMismatch, RunFolder, RunFolderBusy

from .conftest import PHASES, tiny_args, tiny_config
from .conftest import assert_same_weights as _assert_same_weights
from .conftest import final_weights as _final_weights

ROOT = Path(__file__).resolve().parents[2]


def _forbid(monkeypatch, *names: str) -> None:
    """Make the named pieces of work raise: proof that a run did not redo them."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work that should have been reused was redone")

    targets = {
        "critic": (IQL, "update"),
        "behaviour": (aepo, "diffusion_loss"),
        "variance": (aepo, "estimate_variance_table"),
        "energy": (aepo, "regression_loss"),
        "evaluation": (aepo, "evaluate"),
    }
    for name in names:
        monkeypatch.setattr(*targets[name], forbidden)


def _fail_after(monkeypatch, owner, name: str, calls: int) -> list:
    """Let ``owner.name`` run ``calls`` times, then raise KeyboardInterrupt; returns the call log."""
    original, log = getattr(owner, name), []

    def wrapped(*args, **kwargs):
        if len(log) == calls:
            raise KeyboardInterrupt
        log.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return log


def test_end_to_end_tiny(finished_run):
    folder, results = finished_run
    assert set(results["scores"]) == {"aepo", "guided_single", "training_free_single", "behaviour", "iql_awr"}
    refs = results["reference_scores"]
    for entry in results["scores"].values():
        (ret,) = entry["returns"]
        assert -200 * 16.3 <= ret <= 0  # Pendulum's reward is in [−16.3, 0] per step, 200 steps
        assert entry["score_mean"] == pytest.approx(
            100 * (ret - refs["random"]) / (refs["expert"] - refs["random"])
        )
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "results.json", "learning_curves.png", "state.json", "checkpoints"} <= files
    assert (folder / "learning_curves.png").read_bytes().startswith(b"\x89PNG")
    saved = json.loads((folder / "config.json").read_text())
    assert saved["training"]["critic_steps"] == 200 and saved["training"]["iql"]["hidden"] == 32
    assert "cql" not in saved["training"]  # the unused critic's settings change nothing
    assert saved["evaluation"]["eval_episodes"] == 1 and saved["evaluation"]["behaviour"]["sampler"]
    for phase, steps in zip(PHASES, (200, 200, 50), strict=True):
        assert checkpoint_steps(folder / "checkpoints", phase)[0] == steps
    assert all(seconds is not None for seconds in results["phase_seconds"].values())
    assert "IQL policy (AWR)" in format_scores(results)


def test_interrupted_run_resumes_bit_identically(finished_run, tmp_path, monkeypatch):
    """Interrupted in the critic phase, then in the energy phase (with checkpoints every 20 steps,
    a runtime setting), the run ends with the weights and returns of the uninterrupted run."""
    reference_folder, reference = finished_run
    config = tiny_config(tmp_path / "resumed", "--checkpoint-every", "20")
    with monkeypatch.context() as patch:
        _fail_after(patch, IQL, "update", 150)
        with pytest.raises(KeyboardInterrupt):
            run(config)
    assert checkpoint_steps(tmp_path / "resumed" / "checkpoints", "critic") == [140, 120]
    with monkeypatch.context() as patch:
        critic_calls = _fail_after(patch, IQL, "update", 10**6)
        _fail_after(patch, aepo, "regression_loss", 30)
        with pytest.raises(KeyboardInterrupt):
            run(config)
    assert len(critic_calls) == 60  # steps 141..200 only
    assert checkpoint_steps(tmp_path / "resumed" / "checkpoints", "energy") == [20]
    _forbid(monkeypatch, "critic", "behaviour", "variance")
    results = run(config)
    _assert_same_weights(_final_weights(tmp_path / "resumed"), _final_weights(reference_folder))
    assert results["scores"] == reference["scores"]


@pytest.mark.slow
def test_kill_9_and_resume_is_bit_identical(finished_run, tmp_path):
    """A run killed with SIGKILL as soon as it has checkpointed resumes to the same result."""
    reference_folder, reference = finished_run
    folder = tmp_path / "killed"
    code = (
        "import sys\nfrom tests.recipes.conftest import tiny_config\n"
        "from energy_guidance.recipes.aepo import run\n"
        "run(tiny_config(sys.argv[1], '--checkpoint-every', '20'))"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=ROOT, env=os.environ)
    deadline = time.monotonic() + 120
    while not (folder / "checkpoints" / "critic-40.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before a checkpoint"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (folder / "results.json").exists()  # killed before it finished
    results = run(tiny_config(folder, "--checkpoint-every", "20"))
    _assert_same_weights(_final_weights(folder), _final_weights(reference_folder))
    assert results["scores"] == reference["scores"]


def test_finished_run_is_reevaluated_with_new_settings_without_retraining(finished_run, monkeypatch):
    folder, reference = finished_run
    _forbid(monkeypatch, "critic", "behaviour", "variance", "energy")
    extra = ("--eval-episodes", "2", "--num-candidates", "2", "--inference-steps", "3", "--ablations")
    results = run(tiny_config(folder, *extra))
    assert set(results["scores"]) == {
        "aepo",
        "behaviour",
        "iql_awr",
        "guided_single",
        "training_free_single",
        "guided_single_rescale_on",
        "unguided_best_of_n",
    }
    assert all(len(entry["returns"]) == 2 for entry in results["scores"].values())
    assert json.loads((folder / "config.json").read_text())["evaluation"]["eval_episodes"] == 2
    # Back to the first settings: their evaluation is cached, nothing is recomputed.
    _forbid(monkeypatch, "evaluation")
    assert run(tiny_config(folder))["scores"] == reference["scores"]
    # Ablations only add policies: the main policies' cached results are reused.
    again = run(tiny_config(folder, *extra[:6], "--no-ablations"))
    main = ("aepo", "guided_single", "training_free_single", "behaviour", "iql_awr")
    assert again["scores"] == {k: results["scores"][k] for k in main}


def test_changed_training_settings_are_refused(finished_run, monkeypatch):
    folder, reference = finished_run
    with pytest.raises(ConfigMismatch, match=r"different training settings \(fields \['beta', 'iql\.lr'\]\)"):
        run(tiny_config(folder, "--beta", "7", "--iql.lr", "1e-3"))
    # Settings of a critic that is not used, and runtime settings, are not training settings.
    _forbid(monkeypatch, "critic", "behaviour", "variance", "energy", "evaluation")
    results = run(tiny_config(folder, "--cql.hidden", "64", "--threads", "2", "--checkpoint-every", "7"))
    assert results["scores"] == reference["scores"]


def test_bad_inputs_fail_clearly_and_leave_the_folder_usable(tiny_dataset, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="minari download foo/bar-v0"):
        run(tiny_config(folder, dataset="foo/bar-v0"))
    with pytest.raises(ValueError, match="observation_space mismatch"):
        run(tiny_config(folder, env="MountainCarContinuous-v0"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        aepo.main(["--dataset", "foo/bar-v0", "--run-dir", str(folder)])  # no traceback
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: Minari dataset 'foo/bar-v0' is not present")
    assert "python -m energy_guidance.recipes.datasets build" in err
    assert not folder.exists()  # no folder, no stray .lock
    # A later valid run in the same folder is accepted (stopped once its configuration is saved).
    monkeypatch.setattr(aepo, "_run", lambda *args: "adopted")
    assert run(tiny_config(folder, "--beta", "2")) == "adopted"
    assert json.loads((folder / "config.json").read_text())["training"]["beta"] == 2.0


def test_a_second_concurrent_run_is_refused(finished_run, monkeypatch):
    folder, _ = finished_run
    state = (folder / "state.json").read_bytes()
    _forbid(monkeypatch, "critic", "behaviour", "variance", "energy", "evaluation")
    with RunFolder(folder).lock():  # another run holds the folder
        with pytest.raises(
            RunFolderBusy, match=rf"in use by another run \(pid {os.getpid()}, since .*--run-dir"
        ):
            run(tiny_config(folder, "--eval-episodes", "3"))
    assert (folder / "state.json").read_bytes() == state


@pytest.mark.parametrize(
    "name, damage",
    [
        ("state.json", lambda b: b[: len(b) // 2]),
        ("config.json", lambda b: b[:10]),
        ("variance_table.safetensors", lambda b: bytes(len(b))),
        ("variance_table.safetensors", lambda b: b[:-7]),
    ],
)
def test_a_damaged_file_is_named(finished_run, name, damage):
    folder, _ = finished_run
    path = folder / name
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptFileError) as error:
        run(tiny_config(folder))
    assert error.value.path == path and str(path) in str(error.value)


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(finished_run, monkeypatch, caplog):
    """The critic's final weights are truncated: the run warns naming the file, retrains from the
    previous checkpoint (step 100) and ends with the same weights; the evaluation stays cached."""
    folder, reference = finished_run
    before = _final_weights(folder)
    damaged = folder / "checkpoints" / "critic-200.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-100])
    calls = _fail_after(monkeypatch, IQL, "update", 10**6)
    _forbid(monkeypatch, "behaviour", "variance", "energy", "evaluation")
    with caplog.at_level(logging.INFO, logger="energy_guidance"):
        results = run(tiny_config(folder))
    assert f"checkpoint critic-200 is damaged and does not count: {damaged}" in caplog.text
    assert "resuming critic from step 100 of 200" in caplog.text
    assert (folder / "checkpoints" / "critic-200.safetensors.damaged").exists()
    assert len(calls) == 100
    _assert_same_weights(_final_weights(folder), before)
    assert results["scores"] == reference["scores"]


def test_invalid_choices_fail_before_any_work(tmp_path):
    for field, value in [("critic", "sac"), ("reduce", "max"), ("variance", "bogus")]:
        with pytest.raises(ValueError, match=f"{field} must be one of"):
            run(tiny_config(tmp_path / field, **{field: value}))
        assert not (tmp_path / field).exists()
    config = tiny_config(tmp_path / "s")
    config.behaviour.sampler = "heun"
    with pytest.raises(ValueError, match=r"behaviour\.sampler must be one of"):
        run(config)
    assert not (tmp_path / "s").exists()
    with pytest.raises(
        ValueError, match=r"smc_temper must be a number in \[0, ∞\), got -1\.0 \(--smc-temper\)"
    ):
        run(tiny_config(tmp_path / "t", smc_temper=-1.0))
    assert not (tmp_path / "t").exists()


def test_cql_runs_through_the_recipe(finished_run, tmp_path):
    results = run(tiny_config(tmp_path / "cql", "--critic", "cql", "--critic-steps", "50"))
    assert set(results["scores"]) == {
        "aepo",
        "guided_single",
        "training_free_single",
        "behaviour",
        "cql_actor",
    }
    assert "CQL policy (SAC actor)" in format_scores(results)


def test_a_new_critic_is_its_class_and_its_registry_line(finished_run, tmp_path, monkeypatch):
    """A critic registered in CRITICS (no AEPOConfig field: its default settings) runs through the
    recipe unchanged; its own policy is reported under its name."""
    from energy_guidance.recipes.trainers import CRITICS

    @dataclasses.dataclass
    class SmallConfig(IQLConfig):
        hidden: int = 32

    class SmallIQL(IQL):
        Config = SmallConfig
        policy_name, policy_label = "small_iql_awr", "small IQL policy (AWR)"

    monkeypatch.setitem(CRITICS, "small", SmallIQL)
    results = run(tiny_config(tmp_path / "new", critic="small"))
    assert set(results["scores"]) == {
        "aepo",
        "guided_single",
        "training_free_single",
        "behaviour",
        "small_iql_awr",
    }
    assert "small IQL policy (AWR)" in format_scores(results)
    saved = json.loads((tmp_path / "new" / "config.json").read_text())["training"]
    assert saved["small"]["hidden"] == 32 and "iql" not in saved  # its Config() defaults, recorded


def test_smc_selection_is_evaluated_beside_best_of_n(finished_run, monkeypatch):
    """--smc adds policies that pick one action per state from K = num_candidates SMC particles
    (a weighted draw, the highest weight, a draw with the twist tempered by --smc-temper); training
    is reused; another power is another policy, evaluated beside the cached ones."""
    folder, reference = finished_run
    _forbid(monkeypatch, "critic", "behaviour", "variance", "energy")
    results = run(tiny_config(folder, "--smc"))
    smc = ("smc_draw", "smc_best_weight", "smc_draw_temper3")
    assert set(smc) <= set(results["scores"])
    for name in smc:
        assert all(math.isfinite(r) for r in results["scores"][name]["returns"])
    for name in ("aepo", "behaviour", "iql_awr"):  # cached: the same evaluation settings
        assert results["scores"][name] == reference["scores"][name]
    assert "SMC, N particles: a weighted draw" in format_scores(results)
    assert "twist tempered (p = 3)" in format_scores(results)
    again = run(tiny_config(folder, "--smc", "--smc-temper", "1.5"))
    assert "smc_draw_temper1.5" in again["scores"]
    assert "smc_draw_temper3" not in again["scores"]
    for name in smc[:2]:  # cached
        assert again["scores"][name] == results["scores"][name]
    # with --compare quadrature, SMC also runs training-free with the quadrature as its twist
    quadrature = run(tiny_config(folder, "--smc", "--compare", "quadrature"))
    assert {"quadrature", "smc_quadrature_draw_temper3"} <= set(quadrature["scores"])
    assert all(math.isfinite(r) for r in quadrature["scores"]["smc_quadrature_draw_temper3"]["returns"])
    assert "quadrature twist (p = 3)" in format_scores(quadrature)


def test_compare_trains_qgpo_and_cql_once_and_evaluates_them_beside_aepo(finished_run, monkeypatch):
    """--compare adds QGPO (CEP network on behaviour support samples), DPS-style and
    Gaussian-quadrature guidance and CQL's actor on the finished run: AEPO's phases are reused,
    the new ones are trained once and reused by the next invocation."""
    folder, reference = finished_run
    _forbid(monkeypatch, "critic", "behaviour", "variance", "energy")
    extra = ("--compare", "qgpo", "dps", "cql", "quadrature")  # QGPO's defaults: all 800 states, M = 16
    results = run(tiny_config(folder, *extra))
    assert {"qgpo", "dps", "cql_actor", "quadrature"} <= set(results["scores"])
    for name in ("qgpo", "dps", "cql_actor", "quadrature"):
        assert all(math.isfinite(r) for r in results["scores"][name]["returns"])
    assert results["scores"]["aepo"] == reference["scores"]["aepo"]  # cached evaluation
    assert {"qgpo_support", "qgpo", "critic_cql"} <= set(results["phase_seconds"])
    support = load_tensors(folder / "qgpo_support.safetensors")[0]["actions"]
    assert support.shape == (800, 16, 1) and support.abs().max() <= 1
    assert checkpoint_steps(folder / "checkpoints", "qgpo")[0] == 50  # energy_steps
    # A second invocation trains nothing (CQL's and CEP's updates are forbidden too).
    from energy_guidance.baselines import contrastive
    from energy_guidance.recipes.cql import CQL

    monkeypatch.setattr(CQL, "update", lambda *a, **k: pytest.fail("CQL retrained"))
    monkeypatch.setattr(contrastive, "contrastive_loss", lambda *a, **k: pytest.fail("CEP retrained"))
    _forbid(monkeypatch, "evaluation")
    again = run(tiny_config(folder, *extra))
    assert again["scores"] == results["scores"]


def test_compare_rejects_unknown_methods(tmp_path):
    with pytest.raises(ValueError, match="compare takes names from"):
        run(tiny_config(tmp_path / "r", compare=("sfbc",)))


def test_device_cuda_without_cuda_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        run(tiny_config(tmp_path / "r", device="cuda"))
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_torchrun_with_two_processes_writes_the_same_kind_of_run(finished_run, tmp_path):
    """``torchrun --nproc-per-node 2 -m energy_guidance.recipes.aepo``: two CPU processes (gloo) each train on
    half the batch; rank 0 writes checkpoints with the single-process run's keys and shapes,
    config.json and results.json with the same policies, and prints the scores once."""
    folder, reference = finished_run
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "energy_guidance.recipes.aepo", *tiny_args(tmp_path / "ddp")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert done.stdout.count("normalised score") == len(reference["scores"])  # rank 0 alone prints
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert set(results["scores"]) == set(reference["scores"])
    ours, theirs = _final_weights(tmp_path / "ddp"), _final_weights(folder)
    for phase in PHASES:
        assert {k: v.shape for k, v in ours[phase].items()} == {k: v.shape for k, v in theirs[phase].items()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_recipe_runs_on_cuda_with_the_cpu_runs_random_numbers(finished_run, tmp_path):
    """--device cuda: every phase and policy on the GPU, finite returns, the CPU run's policies
    and checkpoint format (run where a GPU is lent; skipped on this project's CPU machines)."""
    folder, reference = finished_run
    results = run(tiny_config(tmp_path / "cuda", device="cuda"))
    assert set(results["scores"]) == set(reference["scores"])
    assert all(math.isfinite(r) for entry in results["scores"].values() for r in entry["returns"])
    ours = load_tensors(tmp_path / "cuda" / "checkpoints" / "behaviour-100.safetensors")[0]
    assert ours.keys() == load_tensors(folder / "checkpoints" / "behaviour-100.safetensors")[0].keys()


def test_the_energy_network_can_be_trained_as_a_classifier(tiny_dataset, tmp_path, monkeypatch):
    """--energy-loss classifier trains the intermediate-energy network on (C') of
    energy_guidance.classifier (advantage-weighted data actions against the data) instead of the
    closed-form targets, and guides with it; the config records the choice."""
    _forbid(monkeypatch, "energy")  # the closed-form regression is never run
    folder = tmp_path / "classifier"
    results = run(tiny_config(folder, "--energy-loss", "classifier"))
    for name in ("aepo", "guided_single"):
        assert all(math.isfinite(r) for r in results["scores"][name]["returns"])
    saved = json.loads((folder / "config.json").read_text())["training"]
    assert saved["energy_loss"] == "classifier"
    step = checkpoint_steps(folder / "checkpoints", "energy")[0]
    history = read_json(folder / "checkpoints" / f"energy-{step}.json")["history"]["energy_loss"]
    assert step == 50 and all(math.isfinite(v) for v in history)


def test_a_run_made_before_a_training_option_existed_still_resumes(finished_run, monkeypatch):
    """A run folder whose config.json predates a training field (here energy_loss) is adopted
    when the field keeps its default, and retrains nothing; another value is a mismatch."""
    folder, reference = finished_run
    path = folder / "config.json"
    saved = json.loads(path.read_text())
    del saved["training"]["energy_loss"]
    path.write_text(json.dumps(saved))
    _forbid(monkeypatch, "critic", "behaviour", "variance", "energy", "evaluation")
    assert run(tiny_config(folder))["scores"] == reference["scores"]
    assert json.loads(path.read_text())["training"]["energy_loss"] == "closed_form"
    path.write_text(json.dumps(saved))  # without the field again
    with pytest.raises(ConfigMismatch, match=r"energy_loss"):
        run(tiny_config(folder, "--energy-loss", "classifier"))


def test_q_scale_averages_over_a_random_subset_of_states_not_the_first():
    """Q(s, a) = s₀·a₀ has spread |s₀|/√3 at a state (a₀ ~ U[-1, 1]). With the data stored as
    1,000 states of s₀ = 1 then 1,000 of s₀ = 3 (an early and a late half, as in a replay set), a
    random subset of 200 holds a fraction f ≈ ½ of the s₀ = 3 states: q_scale·√3 = 1 + 2f. Each
    state's std from 64 actions has a relative s.e. below 1/√126 (the Gaussian value; a uniform's
    is smaller), so the mean over 200 states one below 0.6 %; f's s.e. is at most √(¼/200). Both
    checks allow 5 s.e."""
    critic = type("Critic", (), {"q_values": staticmethod(lambda s, a: s[:, 0] * a[:, 0])})()
    states = torch.cat([torch.ones(1000, 2), 3 * torch.ones(1000, 2)])
    per_state_se = 1 / math.sqrt(126) / math.sqrt(200)
    first = aepo.measure_q_scale(critic, states[:200], 1, "min", max_states=200) * math.sqrt(3)
    assert abs(first - 1) < 5 * per_state_se  # the first 200 states alone: s₀ = 1 only
    mixed = aepo.measure_q_scale(critic, states, 1, "min", max_states=200) * math.sqrt(3)
    assert abs((mixed - 1) / 2 - 0.5) < 5 * math.hypot(math.sqrt(0.25 / 200), per_state_se)


@pytest.mark.parametrize("setting", ["raw", "standardised"])
def test_the_critic_learns_from_the_observations_it_is_set_to_read(
    tiny_dataset, tmp_path, monkeypatch, setting
):
    """With --critic-observations raw the critic's networks see the data set's raw observations;
    with standardised (the default), the standardised states the behaviour model sees."""
    seen = []

    def first_batch(self, batch, generator=None):
        seen.append(batch.observations.clone())
        raise KeyboardInterrupt  # one batch is all this test needs

    monkeypatch.setattr(IQL, "update", first_batch)
    config = tiny_config(tmp_path / setting, "--critic-observations", setting)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    inputs = load_inputs(config)
    states = inputs.data.observations
    rows = inputs.normalizer.inverse(states) if setting == "raw" else states
    # every row of the batch is a row of the expected observations
    distance = torch.cdist(seen[0], rows, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert distance.max() < 1e-4 * rows.abs().max()


def test_a_run_made_before_critic_observations_existed_read_standardised_ones(finished_run, monkeypatch):
    """Its critic read standardised observations, the default: it resumes without retraining, and
    a critic on raw observations would be another critic. The locomotion presets read raw ones."""
    folder, reference = finished_run
    path = folder / "config.json"
    saved = json.loads(path.read_text())
    assert saved["training"]["critic_observations"] == "standardised"
    del saved["training"]["critic_observations"]
    path.write_text(json.dumps(saved))
    with pytest.raises(ConfigMismatch, match=r"critic_observations"):
        run(tiny_config(folder, "--critic-observations", "raw"))
    _forbid(monkeypatch, "critic", "behaviour", "variance", "energy", "evaluation")
    assert run(tiny_config(folder))["scores"] == reference["scores"]
    for preset in ("locomotion-cpu", "locomotion-cpu-long", "locomotion-gpu"):
        assert parse_args(["--preset", preset]).critic_observations == "raw"
