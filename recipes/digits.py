"""Guide an unmodified diffusers DDPMPipeline to draw a chosen handwritten digit.

    python -m energy_guidance.recipes.digits     # digit 3, caches weights, writes outputs/digits/
    python -m energy_guidance.recipes.digits --digit 7 --beta 2 --variance jacobian
    python -m energy_guidance.recipes.digits --sweep 0.0 data_var quadrature   # all ten digits, per estimator

The behaviour model is a small ``UNet2DModel`` DDPM trained on scikit-learn's 8×8 digits
(``load_digits``, bundled with scikit-learn, no download), scaled to [-1, 1]. The energy is a
differentiable classifier's negative log-likelihood of the chosen digit k,

    E(x) = -log p_A(y = k | x),    target ∝ q(x)·p_A(k | x)^β,

so β = 1 asks for the model's own class-conditional q(x | y = k) (as far as classifier A is
calibrated on the model's samples). Guidance runs through :func:`energy_guidance.pipelines.guide_pipeline`
on a stock ``DDPMPipeline``. Success is judged by classifier B, trained independently: a support
vector machine (scikit-learn) on the other half of the data, while classifier A (a small torch
CNN, the energy) sees only the first half. The script prints the fraction of unguided and guided
samples that B labels k and saves a PNG grid of both.

Trained weights are cached as safetensors under ``--cache-dir`` (default
``$ENERGY_GUIDANCE_CACHE`` or ``~/.cache/energy-guidance``), keyed by the training settings;
delete the files to retrain. Outputs go to ``--out`` (default ``outputs/digits``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
import typing
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
import tyro
from diffusers.models.unets.unet_2d import UNet2DModel

# the classes from their modules: diffusers' top-level names are placeholders to type checkers
from diffusers.pipelines.ddpm.pipeline_ddpm import DDPMPipeline
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from torch import Tensor, nn

from energy_guidance import GaussianQuadrature, guide_pipeline
from energy_guidance.checkpoints import atomic_write, cached_module
from energy_guidance.posterior import VARIANCES
from energy_guidance.training import History, fit
from energy_guidance.variance import VarianceTable, estimate_variance_table

from . import cli
from .plots import pyplot


@dataclass
class DigitsConfig:
    """Guide a DDPMPipeline on 8×8 digits to a chosen digit."""

    digit: Literal[0, 1, 2, 3, 4, 5, 6, 7, 8, 9] = 3  # the digit to guide toward
    beta: float = 1.0  # inverse temperature of the target q(x)·p_A(digit | x)^β
    # posterior variance: a number (0.0 = DPS-style) or eps_norm, data_var, diagonal, jacobian; or
    # "quadrature": the Gaussian quadrature (7) with data_var and the cubature rule (128 nodes)
    variance: str = "0.0"
    scale: float = 1.0  # multiplies the guidance term
    num_samples: int = 64  # images per sampler
    num_inference_steps: int = 100  # DDPM steps of the pipeline
    channels: tuple[int, int] = (32, 64)  # UNet widths (part of the DDPM's cache key)
    train_steps: int = 1500  # DDPM training steps (cache key)
    batch_size: int = 128  # DDPM batch size (cache key)
    lr: float = 2e-3  # DDPM learning rate (cache key)
    classifier_steps: int = 600  # training steps of classifier A, the energy (its cache key)
    seed: int = 0  # seeds training, the data split and sampling (cache keys)
    threads: int = 1  # 2 threads oversubscribe a shared 2-core machine; pass --threads 2 when idle
    cache_dir: str = ""  # "" = $ENERGY_GUIDANCE_CACHE or ~/.cache/energy-guidance
    out: str = "outputs/digits"  # PNG and JSON outputs
    sweep: tuple[str, ...] = ()  # instead: success for all ten digits per listed variance (0.0 data_var ...)


# --- data --------------------------------------------------------------------------------------


def load_data() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 digits as images (N, 1, 8, 8) in [-1, 1] and labels (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32)) / 8 - 1
    return images[:, None], torch.from_numpy(digits.target).long()


def split(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Two disjoint halves of range(n): A trains the guidance classifier, B the judge."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n // 2], perm[n // 2 :]


# --- behaviour model ---------------------------------------------------------------------------


def make_unet(channels: tuple[int, int]) -> UNet2DModel:
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=tuple(channels),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )


def train_ddpm(unet: UNet2DModel, scheduler: DDPMScheduler, images: Tensor, cfg: DigitsConfig) -> History:
    """ε-prediction DDPM loss ‖ε̂(√ᾱ·x0 + √(1-ᾱ)·ε, t) - ε‖², Adam with cosine decay."""
    gen = torch.Generator().manual_seed(cfg.seed)

    def loss() -> Tensor:
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=gen)
        t = torch.randint(0, scheduler.config["num_train_timesteps"], (cfg.batch_size,), generator=gen)
        noise = torch.randn(cfg.batch_size, 1, 8, 8, generator=gen)
        x_t = scheduler.add_noise(images[idx], noise, typing.cast(torch.IntTensor, t))  # any integers
        return (unet(x_t, t).sample - noise).pow(2).mean()

    return fit(unet, loss, steps=cfg.train_steps, lr=cfg.lr, name="DDPM")


# --- classifiers -------------------------------------------------------------------------------


class DigitClassifier(nn.Module):
    """Classifier A: a small CNN p_A(y | x) on 8×8 images in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 16, 64),
            nn.SiLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def train_classifier(images: Tensor, labels: Tensor, steps: int, seed: int) -> DigitClassifier:
    """Cross-entropy with Gaussian input noise (std 0.2), which smooths ∇ log p_A for guidance."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    clf = DigitClassifier()

    def loss() -> Tensor:
        idx = torch.randint(0, len(images), (128,), generator=gen)
        x = images[idx] + 0.2 * torch.randn(128, 1, 8, 8, generator=gen)
        return nn.functional.cross_entropy(clf(x), labels[idx])

    fit(clf, loss, steps=steps, lr=2e-3, name="classifier A")
    return clf.eval()


class Judge(Protocol):
    """Classifier B as the demo uses it: flattened images (N, 64) -> predicted digits (N,)."""

    def predict(self, x: np.ndarray) -> np.ndarray: ...


def train_judge(images: Tensor, labels: Tensor) -> Judge:
    """Classifier B: an RBF support vector machine on the pixels (scikit-learn)."""
    from sklearn.svm import SVC

    return SVC(C=10.0, gamma="scale").fit(images.reshape(len(images), -1).numpy(), labels.numpy())


def digit_energy(classifier: nn.Module, digit: int):
    """E(x) = -log p_A(y = digit | x) (B,), lower is better."""

    def energy(x: Tensor) -> Tensor:
        return -torch.log_softmax(classifier(x), dim=1)[:, digit]

    return energy


# --- caching -----------------------------------------------------------------------------------


def cache_dir(cfg: DigitsConfig) -> Path:
    root = (
        cfg.cache_dir or os.environ.get("ENERGY_GUIDANCE_CACHE") or Path.home() / ".cache" / "energy-guidance"
    )
    path = Path(root) / "digits"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _key(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


# --- the demo ----------------------------------------------------------------------------------


def to_model_space(images: Tensor) -> Tensor:
    """DDPMPipeline's output (x/2 + 0.5, clamped to [0, 1]) back to [-1, 1]."""
    return images * 2 - 1


def judge_rate(judge: Judge, x: Tensor, digit: int) -> float:
    pred = judge.predict(x.reshape(len(x), -1).detach().numpy())
    return float(np.mean(pred == digit))


def save_grid(path: Path, panels: dict[str, Tensor]) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (title, x) in zip(np.atleast_1d(axes), panels.items(), strict=True):
        n = int(np.ceil(np.sqrt(len(x))))
        canvas = -np.ones((n * 9 - 1, n * 9 - 1))
        for i, img in enumerate(x[: n * n]):
            r, c = divmod(i, n)
            canvas[r * 9 : r * 9 + 8, c * 9 : c * 9 + 8] = img.reshape(8, 8).numpy()
        ax.imshow(canvas, cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=120, format="png")
    atomic_write(path, buffer.getvalue())
    plt.close(fig)


def parse_variance(text: str) -> str | float:
    try:
        return float(text)
    except ValueError:
        return text


@dataclass
class Demo:
    """Everything the guided runs share: models, the judge, the pipeline, timings."""

    cfg: DigitsConfig
    scheduler: DDPMScheduler
    unet: UNet2DModel
    classifier: DigitClassifier
    judge: Judge
    images: Tensor
    pipe: DDPMPipeline
    info: dict
    variance_table: VarianceTable | None = None  # built on first use by a table estimator


def prepare(cfg: DigitsConfig) -> Demo:
    """Load the data, train (or load from the cache) the DDPM and classifier A, fit judge B."""
    torch.set_num_threads(cfg.threads)
    images, labels = load_data()
    part_a, part_b = split(len(images), cfg.seed)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    folder = cache_dir(cfg)

    unet_settings = {k: getattr(cfg, k) for k in ("train_steps", "batch_size", "lr", "seed")}
    unet_settings["channels"] = list(cfg.channels)

    def build_unet() -> UNet2DModel:
        torch.manual_seed(cfg.seed)
        unet = make_unet(cfg.channels)
        train_ddpm(unet, scheduler, images, cfg)
        return unet

    cached_unet, _, unet_s = cached_module(
        folder / f"unet-{_key(unet_settings)}.safetensors",
        build_unet,
        lambda: make_unet(cfg.channels),
        unet_settings,
    )
    clf_settings = {"steps": cfg.classifier_steps, "seed": cfg.seed}
    cached_clf, _, clf_s = cached_module(
        folder / f"classifier-{_key(clf_settings)}.safetensors",
        lambda: train_classifier(images[part_a], labels[part_a], cfg.classifier_steps, cfg.seed),
        DigitClassifier,
        clf_settings,
    )
    # cached_module returns the module that build() or make() made, as an nn.Module
    unet, clf = typing.cast(UNet2DModel, cached_unet), typing.cast(DigitClassifier, cached_clf)
    for p in (*unet.parameters(), *clf.parameters()):
        p.requires_grad_(False)
    judge = train_judge(images[part_b], labels[part_b])
    with torch.no_grad():
        acc_a = float((clf(images[part_b]).argmax(1) == labels[part_b]).float().mean())
    pred_b = judge.predict(images[part_a].reshape(len(part_a), -1).numpy())
    acc_b = float(np.mean(pred_b == labels[part_a].numpy()))
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    info = {
        "classifier_A_heldout_acc": acc_a,
        "judge_B_heldout_acc": acc_b,
        "unet_train_s": unet_s,
        "classifier_train_s": clf_s,
    }
    return Demo(cfg, scheduler, unet, clf, judge, images, pipe, info)


def draw(demo: Demo, guidance: dict | None = None) -> tuple[Tensor, float]:
    """``num_samples`` images from the stock pipeline, guided inside ``guide_pipeline(pipe,
    **guidance)``; seconds."""
    cfg = demo.cfg
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    start = time.perf_counter()
    with guide_pipeline(demo.pipe, **guidance) if guidance is not None else nullcontext():
        (images,) = demo.pipe(
            cfg.num_samples,
            generator=gen,
            num_inference_steps=cfg.num_inference_steps,
            output_type="pt",  # a tensor (N, 1, 8, 8)
            return_dict=False,
        )
    return to_model_space(images), time.perf_counter() - start


def guidance_arguments(
    demo: Demo, digit: int, beta: float, variance: str | float, scale: float = 1.0
) -> dict:
    """``guide_pipeline``'s arguments for guidance toward ``digit``; table estimators (and the
    quadrature's data_var) share one table estimated from the data."""
    table = None
    if isinstance(variance, str) and variance != "jacobian":
        if demo.variance_table is None:
            demo.variance_table = estimate_variance_table(
                demo.scheduler, demo.unet, demo.images, num_levels=32, batch_size=512
            )
        table = demo.variance_table
    energy = digit_energy(demo.classifier, digit)
    if variance == "quadrature":  # 2·64 nodes: the cubature rule (Gauss-Hermite would need 3^64)
        quadrature = GaussianQuadrature(energy, beta, "data_var", table, rule="cubature")
        return {"estimator": quadrature, "scale": scale, "allow_clipping": True}
    return {
        "energy": energy,
        "beta": beta,
        "variance": variance,
        "variance_table": table,
        "scale": scale,
        "allow_clipping": True,  # images live in [-1, 1]: the pipeline's clip_sample is meant
    }


def run(cfg: DigitsConfig) -> dict:
    """One digit: success rates of unguided and guided samples, and the PNG grid."""
    start = time.perf_counter()
    demo = prepare(cfg)
    unguided, unguided_s = draw(demo)
    variance = parse_variance(cfg.variance)
    guided, guided_s = draw(demo, guidance_arguments(demo, cfg.digit, cfg.beta, variance, cfg.scale))
    result = {
        "digit": cfg.digit,
        "beta": cfg.beta,
        "variance": cfg.variance,
        "scale": cfg.scale,
        "unguided_success": judge_rate(demo.judge, unguided, cfg.digit),
        "guided_success": judge_rate(demo.judge, guided, cfg.digit),
        **demo.info,
        "unguided_sample_s": unguided_s,
        "guided_sample_s": guided_s,
        "total_s": time.perf_counter() - start,
        "config": asdict(cfg),
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_grid(
        out / f"digits_{cfg.digit}.png",
        {
            f"unguided: {result['unguided_success']:.0%} judged '{cfg.digit}'": unguided,
            f"guided (β={cfg.beta:g}): {result['guided_success']:.0%} judged '{cfg.digit}'": guided,
        },
    )
    atomic_write(out / f"digits_{cfg.digit}.json", json.dumps(result, indent=1).encode())
    return result


def sweep(cfg: DigitsConfig, variances: list[str | float]) -> dict:
    """Success rate for every digit and posterior-variance estimator at ``cfg.beta``."""
    demo = prepare(cfg)
    unguided, _ = draw(demo)
    pred = demo.judge.predict(unguided.reshape(len(unguided), -1).numpy())
    rates: dict[str, list[float]] = {"unguided": [float(np.mean(pred == k)) for k in range(10)]}
    seconds: dict[str, float] = {}
    for variance in variances:
        rates[str(variance)], seconds[str(variance)] = [], 0.0
        for digit in range(10):
            x, s = draw(demo, guidance_arguments(demo, digit, cfg.beta, variance, cfg.scale))
            rates[str(variance)].append(judge_rate(demo.judge, x, digit))
            seconds[str(variance)] += s
    lines = ["| estimator | " + " | ".join(map(str, range(10))) + " | mean | sampling s / digit |"]
    lines.append("|" + "---|" * 13)
    for name, r in rates.items():
        per_digit = f"{seconds[name] / 10:.1f}" if name in seconds else "–"
        lines.append(
            f"| {name} | " + " | ".join(f"{v:.2f}" for v in r) + f" | {np.mean(r):.2f} | {per_digit} |"
        )
    table = "\n".join(lines)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"sweep_beta{cfg.beta:g}.md", (table + "\n").encode())
    return {"rates": rates, "seconds": seconds, "table": table, **demo.info}


def main(argv: list[str] | None = None) -> dict:
    """The command line (one-line errors, ``--log-level`` / ``-q``: :mod:`.cli`)."""
    return cli.command("energy_guidance.recipes.digits", argv, _main)


def validate(cfg: DigitsConfig) -> None:
    """Every numeric setting in its range (one line naming the flag, the value and the range)."""
    cli.check_range("beta", cfg.beta, 0)
    cli.check_range("scale", cfg.scale, 0)
    cli.check_range("lr", cfg.lr, 0, lower_open=True)
    for name, low, high in (
        ("num_samples", 1, math.inf),
        ("num_inference_steps", 1, 1000),  # the DDPM's training steps
        ("train_steps", 1, math.inf),
        ("batch_size", 2, math.inf),
        ("classifier_steps", 1, math.inf),
        ("seed", 0, 2**32 - 1),
        ("threads", 1, 1024),
    ):
        cli.check_range(name, getattr(cfg, name), low, high, integer=True)
    for width in cfg.channels:
        cli.check_range("channels", width, 1, integer=True)
    allowed = (*VARIANCES, "quadrature")
    for name, texts in (("variance", (cfg.variance,)), ("sweep", cfg.sweep)):
        for text in texts:
            value = parse_variance(text)
            if isinstance(value, float):
                cli.check_range(name, value, 0)
            elif value not in allowed:
                raise cli.bad_value(name, f"a number >= 0 or one of {allowed}", value)


def _main(argv: list[str]) -> dict:
    cfg = tyro.cli(
        DigitsConfig,
        args=argv,
        prog="python -m energy_guidance.recipes.digits",
        description=f"Guide a DDPMPipeline on 8×8 digits to a chosen digit. {cli.LOGGING_HELP}",
    )
    validate(cfg)
    if cfg.sweep:
        result = sweep(cfg, [parse_variance(v) for v in cfg.sweep])
        print(result["table"])
        return result
    result = run(cfg)
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1))
    return result


if __name__ == "__main__":
    main()
