"""Scheduler configurations shared by the schedule and guidance tests (diffusers' mixin style).

Every supported scheduler class appears, with each prediction type it supports and its
noise-spacing options (Karras, exponential, flow sigmas, shift), its multi-evaluation steps
(PNDM's Runge–Kutta warm-up, Heun, KDPM2, DPM-Solver SDE) and its stochastic variants. DDPM and
DDIM run with ``clip_sample=False``: clipping x̂0 to [-1, 1] changes the distribution being
sampled. DPM-Solver SDE needs torchsde (a diffusers extra); its configurations are skipped where
it is not installed.
"""

import importlib.util

import diffusers
import pytest

HAS_TORCHSDE = importlib.util.find_spec("torchsde") is not None

SCHEDULER_CONFIGS = {
    "ddpm-eps": (diffusers.DDPMScheduler, {"clip_sample": False}),
    "ddpm-v": (diffusers.DDPMScheduler, {"clip_sample": False, "prediction_type": "v_prediction"}),
    "ddpm-x0": (diffusers.DDPMScheduler, {"clip_sample": False, "prediction_type": "sample"}),
    "ddim-eps": (diffusers.DDIMScheduler, {"clip_sample": False}),
    "ddim-v": (diffusers.DDIMScheduler, {"clip_sample": False, "prediction_type": "v_prediction"}),
    "ddim-x0": (diffusers.DDIMScheduler, {"clip_sample": False, "prediction_type": "sample"}),
    "pndm-eps": (diffusers.PNDMScheduler, {}),  # Runge–Kutta warm-up: half steps, repeated timesteps
    "pndm-plms-v": (diffusers.PNDMScheduler, {"skip_prk_steps": True, "prediction_type": "v_prediction"}),
    "lcm-eps": (diffusers.LCMScheduler, {}),
    "lcm-x0": (diffusers.LCMScheduler, {"prediction_type": "sample"}),
    "tcd-v": (diffusers.TCDScheduler, {"prediction_type": "v_prediction"}),
    "dpm++-eps": (diffusers.DPMSolverMultistepScheduler, {}),
    "dpm++-v": (diffusers.DPMSolverMultistepScheduler, {"prediction_type": "v_prediction"}),
    "dpm++-x0": (diffusers.DPMSolverMultistepScheduler, {"prediction_type": "sample"}),
    "dpm++-karras": (diffusers.DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "dpm++-exponential": (diffusers.DPMSolverMultistepScheduler, {"use_exponential_sigmas": True}),
    "dpm++-flow": (
        diffusers.DPMSolverMultistepScheduler,
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction"},
    ),
    "dpm-singlestep-eps": (diffusers.DPMSolverSinglestepScheduler, {}),
    "dpm-sde-karras": (diffusers.DPMSolverSDEScheduler, {"noise_sampler_seed": 0, "use_karras_sigmas": True}),
    "deis-eps": (diffusers.DEISMultistepScheduler, {}),
    "unipc-eps": (diffusers.UniPCMultistepScheduler, {}),
    "unipc-v": (diffusers.UniPCMultistepScheduler, {"prediction_type": "v_prediction"}),
    "unipc-x0": (diffusers.UniPCMultistepScheduler, {"prediction_type": "sample"}),
    "euler-eps": (diffusers.EulerDiscreteScheduler, {}),
    "euler-x0": (diffusers.EulerDiscreteScheduler, {"prediction_type": "sample"}),
    "euler-karras-v": (
        diffusers.EulerDiscreteScheduler,
        {"use_karras_sigmas": True, "prediction_type": "v_prediction"},
    ),
    "euler-ancestral-eps": (diffusers.EulerAncestralDiscreteScheduler, {}),
    "euler-ancestral-v": (diffusers.EulerAncestralDiscreteScheduler, {"prediction_type": "v_prediction"}),
    "lms-eps": (diffusers.LMSDiscreteScheduler, {}),
    "lms-karras-v": (
        diffusers.LMSDiscreteScheduler,
        {"use_karras_sigmas": True, "prediction_type": "v_prediction"},
    ),
    "heun-eps": (diffusers.HeunDiscreteScheduler, {}),
    "heun-v": (diffusers.HeunDiscreteScheduler, {"prediction_type": "v_prediction"}),
    "heun-x0": (diffusers.HeunDiscreteScheduler, {"prediction_type": "sample"}),
    "kdpm2-eps": (diffusers.KDPM2DiscreteScheduler, {}),
    "kdpm2-karras-v": (
        diffusers.KDPM2DiscreteScheduler,
        {"use_karras_sigmas": True, "prediction_type": "v_prediction"},
    ),
    "kdpm2-ancestral-eps": (diffusers.KDPM2AncestralDiscreteScheduler, {}),
    "kdpm2-ancestral-v": (diffusers.KDPM2AncestralDiscreteScheduler, {"prediction_type": "v_prediction"}),
    "edm-euler-eps": (diffusers.EDMEulerScheduler, {}),
    "edm-euler-v": (diffusers.EDMEulerScheduler, {"prediction_type": "v_prediction"}),
    "edm-dpm++-eps": (diffusers.EDMDPMSolverMultistepScheduler, {}),
    "edm-dpm++-sde-v": (
        diffusers.EDMDPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "prediction_type": "v_prediction"},
    ),
    "flow-euler": (diffusers.FlowMatchEulerDiscreteScheduler, {}),
    "flow-euler-shift3": (diffusers.FlowMatchEulerDiscreteScheduler, {"shift": 3.0}),
    "flow-heun": (diffusers.FlowMatchHeunDiscreteScheduler, {}),
}

# Schedules whose first timestep is pure noise (α = 0 exactly); see test_guidance.py.
STARTS_AT_PURE_NOISE = {"flow-euler", "flow-euler-shift3", "flow-heun"}

# Samplers that are deterministic given their initial noise (an ODE solver, no fresh noise).
DETERMINISTIC = {
    "ddim-eps", "ddim-v", "ddim-x0", "pndm-eps", "pndm-plms-v", "dpm++-eps", "dpm++-v", "dpm++-x0",
    "dpm++-karras", "dpm++-exponential", "dpm++-flow", "dpm-singlestep-eps", "deis-eps", "unipc-eps",
    "unipc-v", "unipc-x0", "euler-eps", "euler-x0", "euler-karras-v", "lms-eps", "lms-karras-v",
    "heun-eps", "heun-v", "heun-x0", "kdpm2-eps", "kdpm2-karras-v", "edm-euler-eps", "edm-euler-v",
    "edm-dpm++-eps", "flow-euler", "flow-euler-shift3", "flow-heun",
}  # fmt: skip


def make_scheduler(name: str):
    """A fresh scheduler for a configuration name of :data:`SCHEDULER_CONFIGS` (the test is
    skipped where the scheduler needs an optional package that is missing)."""
    cls, kwargs = SCHEDULER_CONFIGS[name]
    if cls is diffusers.DPMSolverSDEScheduler and not HAS_TORCHSDE:
        pytest.skip("DPMSolverSDEScheduler needs torchsde (pip install torchsde)")
    return cls(**kwargs)
