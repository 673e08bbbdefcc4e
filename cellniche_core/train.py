"""The fit loop: sample a walk batch, encode its 2-hop neighbourhood, apply the loss.

Tensor-only. The device is chosen once by :func:`resolve_device`; everything else follows
the tensors. Under ``torchrun`` the model is wrapped in PyTorch DDP and every rank draws
its own seed cells.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .features import neighbourhood_profiles
from .model import LearnableTemperature, NicheEncoder, ProjectionHead, multi_positive_info_nce
from .sampling import SIMILAR_SHARE, Neighbourhood, sample_batch

#: progress callback: (step, n_steps, loss)
Progress = Callable[[int, int, float], None]


@dataclass
class TrainConfig:
    """Hyperparameters of the encoder, the sampler and the optimiser."""

    hidden_channels: int = 128
    out_channels: int = 32
    num_layers: int = 2
    # no dropout, and the loss on the embedding itself (no projection head as in SimCLR):
    # mean ARI over 6 training seeds, the head and dropout 0.1 gave STARmap V1 `pheno` 0.629
    # / `expr` 0.613 / DLPFC 0.546 (0.47-0.58 by seed); without the head 0.651 / 0.618 /
    # 0.551 (0.53-0.56); without both 0.648 / 0.616 / 0.563 (0.561-0.564), and 20 % faster.
    # The simulated demo at its planted k (seeds 0-2): 0.820-0.834 against 0.834-0.857.
    dropout: float = 0.0
    projection: bool = False
    fanouts: tuple[int, ...] = (15, 10)
    # 32 seeds (~140 batch cells) against 64, seeds 0-2, median ARI: STARmap V1 `pheno` 0.670 /
    # 0.669, `expr` 0.625 / 0.625, DLPFC 0.553 / 0.558, the demo (planted k) 0.835-0.840 /
    # 0.835-0.839; training ~40 % shorter (32 to 128 seeds measured alike)
    seeds_per_batch: int = 32
    walks_per_seed: int = 10
    # walks of num_layers + 1 steps keep positive pairs inside each other's receptive field
    # (2 layers see 2 hops); longer walks pair cells whose neighbourhoods barely overlap
    walk_length: int = 3
    # positives: pairs co-visited by the walks (local, spatially coherent) or whose
    # surroundings are similar at profile_hops scales (global: the same kind of place
    # anywhere in the batch, in any slide). With walk pairs alone, same-niche cells of
    # other seeds' walks are only negatives, and on real tissue (cortical layers, Visium
    # spots) the embedding did no better than averaging the inputs over neighbours.
    strategy: str = "or"
    # surroundings from 1 to 4 hops of the 15-NN graph (~17 to ~180 cells on STARmap V1 and DLPFC); seeds 0-2,
    # median ARI with area weights, 1-4 against 1-3 hops: STARmap V1 `pheno` 0.703 / 0.702, `expr` 0.627 /
    # 0.616, DLPFC 0.552 / 0.558 (1-5 hops: DLPFC 0.485); the simulated demo (planted k) 0.841-0.844
    profile_hops: tuple[int, ...] = (1, 2, 3, 4)
    # neighbour means (the encoder's and the surroundings') weighted by the area each cell
    # stands for (graph.cell_areas): a mean over tissue, not over cells, so that a dense band
    # does not take in the border of a sparse one. Runs saved before it had plain means.
    area_weights: bool = True
    # the most similar share of each batch's pairs are "similar" (sampling.SIMILAR_SHARE)
    similar_share: float = SIMILAR_SHARE
    hard_weight: float = 0.0
    init_temperature: float = 0.1
    lr: float = 2e-3
    weight_decay: float = 1e-5
    n_steps: int | None = None  # None: chosen from the number of cells, see steps_for
    seed: int = 0
    # "auto": bfloat16 autocast on CUDA GPUs that support it, float32 elsewhere
    precision: str = "auto"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fanouts"] = list(self.fanouts)
        d["profile_hops"] = list(self.profile_hops)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        for key in ("fanouts", "profile_hops"):
            if key in d:
                d[key] = tuple(d[key])
        d.setdefault("projection", True)  # runs saved before the option existed all had the head
        d.setdefault("area_weights", False)  # nor were their means weighted
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


PRECISIONS = ("auto", "fp32", "bf16")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or None for plain float32.

    bfloat16 keeps float32's range, so no loss scaling is needed; it pays on GPUs (tensor
    cores, half the memory traffic of the (n, hidden) activations), not on CPUs.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    # native bfloat16 from compute capability 8 (A100, H100, RTX 30xx on); older GPUs only
    # emulate it, slower than float32
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.bfloat16
    return None


def steps_for(n_cells: int) -> int:
    """Default number of optimisation steps: grows slowly with the cohort size.

    The encoder learns a function of neighbourhood composition, whose variety saturates
    long before the number of cells does; 400 steps at 10k cells, ~1000 at 10^7.
    """
    return int(round(200 + 100 * math.log10(max(n_cells, 10))))


class NicheModel(nn.Module):
    """Encoder, projection head and temperature: everything a checkpoint holds."""

    def __init__(self, in_channels: int, config: TrainConfig):
        super().__init__()
        self.encoder = NicheEncoder(in_channels, config.hidden_channels, config.out_channels,
                                    num_layers=config.num_layers, dropout=config.dropout)
        self.head = ProjectionHead(config.out_channels) if config.projection else nn.Identity()
        self.temperature = LearnableTemperature(config.init_temperature)

    def forward(self, x: torch.Tensor, hood: Neighbourhood, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Projected embeddings of the targets of a sampled neighbourhood; ``x`` is ``x[hood.n_id]``,
        ``weight`` the cell weights ``weights[hood.n_id]`` (or None)."""
        z = self.encoder(x, hood.edge_index, hood.nodes_per_hop, hood.edges_per_hop, weight=weight)
        return self.head(z)


def warmup_cosine(n_steps: int, warmup: float = 0.05) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over 5 % of the steps, then cosine decay to 0."""
    n_warm = max(1, int(warmup * n_steps))

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        progress = (step - n_warm) / max(1, n_steps - n_warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA GPU is available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return torch.device(device)


@dataclass
class History:
    """What happened during training."""

    loss: list[float] = field(default_factory=list)
    temperature: float = float("nan")
    seconds: float = 0.0
    sample_seconds: float = 0.0  # of ``seconds``, spent drawing batches (on a GPU: queueing them)
    steps: int = 0
    mean_batch_cells: float = 0.0
    mean_positives_per_cell: float = 0.0


def train_model(
    x: torch.Tensor,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    config: TrainConfig,
    *,
    profiles: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[NicheModel, History]:
    """Train a :class:`NicheModel` on one (block-diagonal) cohort graph.

    Parameters
    ----------
    x
        (n, in_channels) float32 encoder inputs, on the training device.
    indptr, indices
        CSR graph on the same device.
    profiles
        (n, f) profiles for the ``sim``/``and``/``or`` strategies; by default the inputs
        averaged over ``config.profile_hops`` hops (:func:`~cellniche_core.features.neighbourhood_profiles`).
    weights
        (n,) cell weights of every neighbour mean, the encoder's and the profiles' (see
        ``TrainConfig.area_weights``); None: plain means.
    progress
        Called after every step with ``(step, n_steps, loss)``.
    should_stop
        Polled every step; returning True ends training early (the model so far is kept).
    rank, world_size
        Position under ``torchrun``; every rank draws different seed cells.
    """
    device = x.device
    if profiles is None and config.strategy != "freq":
        profiles = torch.from_numpy(neighbourhood_profiles(
            x.cpu().numpy(), indptr.cpu().numpy(), indices.cpu().numpy(), hops=config.profile_hops,
            weights=None if weights is None else weights.cpu().numpy())).to(device)
    torch.manual_seed(config.seed)  # parameter initialisation
    model = NicheModel(x.shape[1], config).to(device)
    ddp_model: nn.Module = model
    if world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n = x.shape[0]
    n_steps = config.n_steps or steps_for(n)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, warmup_cosine(n_steps))
    gen = torch.Generator(device=device)
    gen.manual_seed(config.seed * 1_000_003 + rank)
    history = History()
    t0 = time.perf_counter()
    batch_cells = positives = sampling = 0.0
    amp = autocast_dtype(config.precision, device)
    history.precision = str(amp).replace("torch.", "") if amp else "float32"
    model.train()
    for step in range(n_steps):
        t_sample = time.perf_counter()
        seeds = torch.randint(0, n, (config.seeds_per_batch,), generator=gen, device=device)
        batch, hood = sample_batch(indptr, indices, seeds, walks_per_seed=config.walks_per_seed,
                                   walk_length=config.walk_length, fanouts=config.fanouts, generator=gen,
                                   strategy=config.strategy, profiles=profiles, share=config.similar_share)
        sampling += time.perf_counter() - t_sample
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            z = ddp_model(x[hood.n_id], hood, None if weights is None else weights[hood.n_id])
        # the loss (exponentials over the batch) stays in float32
        loss = multi_positive_info_nce(z.float(), batch.positives, model.temperature(),
                                       hard_weight=config.hard_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        value = float(loss.detach())
        history.loss.append(value)
        batch_cells += batch.nodes.numel()
        positives += 2.0 * batch.pairs.shape[1] / max(batch.nodes.numel(), 1)
        if progress is not None:
            progress(step + 1, n_steps, value)
        if should_stop is not None and should_stop():
            break
    model.eval()
    history.steps = len(history.loss)
    history.seconds = time.perf_counter() - t0
    history.sample_seconds = sampling
    history.temperature = float(model.temperature().detach())
    history.mean_batch_cells = batch_cells / max(history.steps, 1)
    history.mean_positives_per_cell = positives / max(history.steps, 1)
    return model, history


def set_seed_everywhere(seed: int) -> None:
    """Seed numpy and torch global generators (for code outside our own generators)."""
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
