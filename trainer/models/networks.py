"""Networks of the agent and the exported agent graph (docs/architecture.md, "The agent graph").

The agent holds two policies: π_off (frozen after offline training, with its own encoder) and π_on
(trained online, sharing the critics' encoder). Critics: twin Q_r, twin Q_c, V_r, V_c, an ensemble
of Q_h (max over members) and V_h. With ``AgentSpec.world_model`` it also carries the latent world
model, and with ``selection_horizon`` > 0 the graph scores each policy by an imagined rollout
(docs/method.md §7).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reachsafe.protocol.bundle import DEFAULT_PRIMITIVES
from reachsafe.protocol.files import write_atomically
from reachsafe.trainer.models import checkpoint_io
from reachsafe.trainer.models.device import module_device
from reachsafe.trainer.models.layers import mlp
from reachsafe.trainer.models.world_model import WorldModel

GRAPH_INPUTS = ("obs", "noise")
GRAPH_OUTPUTS = ("a_on", "a_off", "q_r", "q_c", "q_h", "candidates")
LOG_STD_MIN, LOG_STD_MAX = -5.0, 1.0

#: The reachability signal h outside hazards (docs/method.md §3); Q_h and V_h start at it.
SAFE_SIGNAL = -1.0


@dataclass
class AgentSpec:
    """Everything needed to rebuild an :class:`Agent` from a checkpoint."""

    obs_shape: tuple[int, ...]
    action_dim: int
    latent_dim: int = 64
    hidden_dim: int = 256
    cnn_channels: int = 16
    n_qh: int = 2
    primitives: tuple[tuple[float, ...], ...] = field(default_factory=lambda: DEFAULT_PRIMITIVES)
    world_model: bool = False  # the agent carries the latent world model (its weights travel with it)
    selection_horizon: int = (
        0  # > 0 (with the world model): imagined policy-selection scores, that many steps
    )
    selection_gamma: float = 0.99  # the discount of those scores

    def __post_init__(self) -> None:
        self.obs_shape = tuple(int(d) for d in self.obs_shape)
        self.primitives = tuple(tuple(float(x) for x in p) for p in self.primitives)
        for p in self.primitives:
            if len(p) != self.action_dim:
                raise ValueError(f"primitive {p} has {len(p)} dims, the action has {self.action_dim}")

    @property
    def is_image(self) -> bool:
        return len(self.obs_shape) == 3

    @property
    def candidate_names(self) -> list[str]:
        return ["a_on", "a_off", "brake"] + [f"primitive_{i}" for i in range(len(self.primitives))]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["obs_shape"] = list(self.obs_shape)
        d["primitives"] = [list(p) for p in self.primitives]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentSpec:
        return cls(**d)


class ImageEncoder(nn.Module):
    """Small CNN on raw frames: takes uint8 (or float in [0, 255]) [B, H, W, 3]; ÷255 and HWC→CHW inside.

    HWC→CHW is a view, so the convolutions see channels-last frames, the layout the CPU and GPU
    convolution kernels prefer. The ReLUs work in place: a convolution's output is needed by
    nothing else, and each saved activation buffer is one frame batch's worth of memory.
    """

    def __init__(self, obs_shape: tuple[int, ...], latent_dim: int, channels: int = 32) -> None:
        super().__init__()
        h, w, c = obs_shape
        self.convs = nn.Sequential(
            nn.Conv2d(c, channels, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * channels, 2 * channels, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        with torch.no_grad():
            n_flat = self.convs(torch.zeros(1, c, h, w)).numel()
        self.head = nn.Sequential(nn.Linear(n_flat, latent_dim), nn.LayerNorm(latent_dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.to(torch.float32).permute(0, 3, 1, 2) / 255.0
        return self.head(self.convs(x).flatten(1))


class StateEncoder(nn.Module):
    """MLP encoder for state-vector observations (tests, state datasets)."""

    def __init__(self, obs_dim: int, latent_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(mlp(obs_dim, hidden_dim, latent_dim, layers=1), nn.LayerNorm(latent_dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.to(torch.float32))


def make_encoder(spec: AgentSpec) -> nn.Module:
    if spec.is_image:
        return ImageEncoder(spec.obs_shape, spec.latent_dim, spec.cnn_channels)
    if len(spec.obs_shape) != 1:
        raise ValueError(f"observation shape {spec.obs_shape} is neither (H, W, 3) nor (D,)")
    return StateEncoder(spec.obs_shape[0], spec.latent_dim, spec.hidden_dim)


class TanhGaussianActor(nn.Module):
    """π(a|z) = tanh(μ + σ·ε); the noise ε is an input so the exported graph stays deterministic."""

    def __init__(self, latent_dim: int, action_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = mlp(latent_dim, hidden_dim, 2 * action_dim)

    def distribution_params(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(z).chunk(2, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1.0)
        return mu, log_std

    def forward(self, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        mu, log_std = self.distribution_params(z)
        return torch.tanh(mu + log_std.exp() * noise)

    def sample(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised sample and its log-probability (for online SAC)."""
        mu, log_std = self.distribution_params(z)
        u = mu + log_std.exp() * torch.randn_like(mu)
        return torch.tanh(u), _tanh_gaussian_log_prob(u, mu, log_std)

    def log_prob(self, z: torch.Tensor, action: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
        """log π(a|z) of given (dataset) actions in [-1, 1]; clipped away from ±1 where atanh diverges."""
        mu, log_std = self.distribution_params(z)
        u = torch.atanh(action.clamp(-1.0 + eps, 1.0 - eps))
        return _tanh_gaussian_log_prob(u, mu, log_std)


def _tanh_gaussian_log_prob(u: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    gauss = -0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    # log |d tanh(u)/du| = log(1 - tanh(u)^2), computed stably
    jac = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
    return (gauss - jac).sum(-1)


class QEnsemble(nn.Module):
    """n independent Q(z, a) heads; ``forward`` returns [..., n]."""

    def __init__(self, latent_dim: int, action_dim: int, hidden_dim: int, n: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(mlp(latent_dim + action_dim, hidden_dim, 1) for _ in range(n))

    def forward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        x = torch.cat([z, a], dim=-1)
        return torch.cat([m(x) for m in self.members], dim=-1)


class ValueNet(nn.Module):
    def __init__(self, latent_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = mlp(latent_dim, hidden_dim, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)


class Agent(nn.Module):
    """π_on, π_off and the critics.

    Reductions: Q_r = min of the twins (pessimistic reward), Q_c = max of the twins (pessimistic cost),
    Q_h = max over the ensemble (pessimistic feasibility).
    """

    def __init__(self, spec: AgentSpec) -> None:
        super().__init__()
        self.spec = spec
        L, A, Hd = spec.latent_dim, spec.action_dim, spec.hidden_dim
        self.encoder = make_encoder(spec)
        self.actor_on = TanhGaussianActor(L, A, Hd)
        self.encoder_off = make_encoder(spec)
        self.actor_off = TanhGaussianActor(L, A, Hd)
        self.q_r = QEnsemble(L, A, Hd, 2)
        self.q_c = QEnsemble(L, A, Hd, 2)
        self.v_r = ValueNet(L, Hd)
        self.v_c = ValueNet(L, Hd)
        self.q_h = QEnsemble(L, A, Hd, spec.n_qh)
        self.v_h = ValueNet(L, Hd)
        # Start Q_h and V_h at the fixed point of a state that never reaches a hazard. The HJ backup
        # propagates danger (the max) within a few backups, but decays an initial 0 toward −1 only by
        # (1 − γ) per backup: starting at 0 leaves every state "infeasible" for ~10⁵ updates.
        for head in [*self.q_h.members, self.v_h.net]:
            nn.init.constant_(head[-1].bias, SAFE_SIGNAL)
        self.register_buffer("primitives", torch.tensor(spec.primitives, dtype=torch.float32).reshape(-1, A))
        # π_on ← π_off (its encoder too): the start of online fine-tuning
        self.actor_on.load_state_dict(self.actor_off.state_dict())
        self.encoder.load_state_dict(self.encoder_off.state_dict())
        self.world_model = WorldModel(L, A, Hd) if spec.world_model else None

    def freeze_offline_policy_from(self, encoder: nn.Module, actor: nn.Module) -> None:
        """π_off ← the trained (encoder, actor); π_on starts as a copy of it."""
        self.encoder_off.load_state_dict(encoder.state_dict())
        self.actor_off.load_state_dict(actor.state_dict())
        self.actor_on.load_state_dict(actor.state_dict())

    def candidates(self, a_on: torch.Tensor, a_off: torch.Tensor) -> torch.Tensor:
        """[B, C, A] in the order [a_on, a_off, brake, primitive_0 … primitive_{K−1}]."""
        b = a_on.shape[0]
        brake = torch.zeros_like(a_on)
        prims = self.primitives.unsqueeze(0).expand(b, -1, -1)
        return torch.cat([a_on.unsqueeze(1), a_off.unsqueeze(1), brake.unsqueeze(1), prims], dim=1)

    def qh_max(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.q_h(z, a).max(dim=-1).values

    def graph_outputs(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.encoder(obs)
        z_off = self.encoder_off(obs)
        a_on = self.actor_on(z, noise)
        # π_off proposes its mean: its σ was fitted to mixed-quality data (often near LOG_STD_MAX), so a
        # sample is close to a random action; exploration comes from π_on's sample alone
        a_off = self.actor_off(z_off, torch.zeros_like(noise))
        if self.spec.selection_horizon > 0 and self.world_model is not None:
            q_r, q_c = self.imagined_scores(z, a_on, a_off)
        else:
            both = torch.stack([a_on, a_off], dim=1)  # [B, 2, A]
            z2 = z.unsqueeze(1).expand(-1, 2, -1)
            q_r = self.q_r(z2, both).min(dim=-1).values
            q_c = self.q_c(z2, both).max(dim=-1).values
        cands = self.candidates(a_on, a_off)
        zc = z.unsqueeze(1).expand(-1, cands.shape[1], -1)
        q_h = self.qh_max(zc, cands)
        return a_on, a_off, q_r, q_c, q_h, cands

    def imagined_scores(
        self, z: torch.Tensor, a_on: torch.Tensor, a_off: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each policy scored by an imagined rollout of itself: [B, 2] reward and cost values.

        From z, policy i takes its proposal a_i, then its own mean action for H − 1 more steps in the
        world model; its score is the discounted imagined reward (cost probability) of those H steps
        plus the discounted min-Q_r (max-Q_c) at the last latent and the policy's next mean action,
        with γ scaled by the continuation probabilities. π_off reads the shared latent: the encoder
        is not trained while the world model is (docs/method.md §7, §13), so it stays π_off's.
        """
        wm = self.world_model
        assert wm is not None
        actors = (self.actor_on, self.actor_off)
        zt, a = torch.stack([z, z]), torch.stack([a_on, a_off])  # [2, B, ...]: policy first
        zero = torch.zeros_like(a_on)

        def means(latents: torch.Tensor) -> torch.Tensor:
            return torch.stack([actor(latents[i], zero) for i, actor in enumerate(actors)])

        ret_r, ret_c = zt.new_zeros(zt.shape[:2]), zt.new_zeros(zt.shape[:2])
        disc = zt.new_ones(zt.shape[:2])
        for t in range(self.spec.selection_horizon):
            if t > 0:
                a = means(zt)
            zt, r_hat, c_logit, cont_logit = wm.step(zt, a)
            ret_r = ret_r + disc * r_hat
            ret_c = ret_c + disc * wm.cost_prob(c_logit)
            disc = disc * self.spec.selection_gamma * torch.sigmoid(cont_logit)
        a = means(zt)
        ret_r = ret_r + disc * self.q_r(zt, a).min(dim=-1).values
        ret_c = ret_c + disc * self.q_c(zt, a).max(dim=-1).values
        return ret_r.transpose(0, 1), ret_c.transpose(0, 1)


class AgentGraph(nn.Module):
    """The exported graph: (obs uint8 [B,H,W,3] | float [B,D], noise [B,A]) → GRAPH_OUTPUTS."""

    def __init__(self, agent: Agent) -> None:
        super().__init__()
        self.agent = agent

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.agent.graph_outputs(obs, noise)


class CheckpointError(Exception):
    """A checkpoint file is missing, truncated or not one this trainer wrote."""


def save_checkpoint(path: str | Path, agent: Agent, step: int, extra: dict[str, Any] | None = None) -> None:
    """Write {agent state, spec, step, **extra} durably and atomically (a crash leaves the old file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"agent": agent.state_dict(), "spec": agent.spec.to_dict(), "step": int(step), **(extra or {})}
    write_atomically(path, checkpoint_io.dumps(payload), fsync=True)


def load_checkpoint(path: str | Path) -> tuple[Agent, dict[str, Any]]:
    """Rebuild the agent from a checkpoint; returns (agent, the whole checkpoint dict).

    The file is msgpack (:mod:`reachsafe.trainer.models.checkpoint_io`), not pickle: reading it builds tensors and
    plain containers only, so a run directory written by another process or copied from elsewhere
    cannot run code here.
    """
    path = Path(path)
    try:
        ckpt = checkpoint_io.loads(path.read_bytes())
        with torch.random.fork_rng(devices=[]):  # loading draws no numbers a run would have drawn
            agent = Agent(AgentSpec.from_dict(ckpt["spec"]))
        agent.load_state_dict(ckpt["agent"])
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}; train first (`reachsafe train offline`)") from None
    except Exception as exc:  # truncated file, a foreign format, wrong keys or shapes
        raise CheckpointError(
            f"{path} is not a usable reachsafe checkpoint ({type(exc).__name__}: {exc}); "
            "resume from an earlier checkpoints/step_*.pt or retrain"
        ) from None
    return agent, ckpt


def with_world_model(agent: Agent, world_model_state: dict[str, torch.Tensor]) -> Agent:
    """A copy of ``agent`` that carries a world model with these weights (offline runs written before
    the agent carried its world model kept it in the learner's state)."""
    spec = AgentSpec.from_dict({**agent.spec.to_dict(), "world_model": True})
    with torch.random.fork_rng(devices=[]):
        upgraded = Agent(spec)
    state = {**agent.state_dict(), **{f"world_model.{k}": v for k, v in world_model_state.items()}}
    upgraded.load_state_dict(state)
    return upgraded.to(module_device(agent))


def on_cpu(agent: Agent) -> Agent:
    """The agent itself when it lives on the CPU, else an fp32 copy there: exports, bundles and their
    parity checks are always built from fp32 CPU weights, wherever the agent trains."""
    if all(t.device.type == "cpu" and t.dtype == torch.float32 for t in agent.state_dict().values()):
        return agent
    with torch.random.fork_rng(devices=[]):  # building the copy must not move the training run's draws
        copy = Agent(agent.spec)
    copy.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in agent.state_dict().items()})
    return copy.train(agent.training)


def polyak(target: nn.Module, source: nn.Module, rate: float) -> None:
    """target ← target + rate · (source − target), every parameter in one multi-tensor op (one
    kernel launch per group on a GPU, the same per-tensor lerp on the CPU)."""
    targets, sources = list(target.parameters()), list(source.parameters())
    if len(targets) != len(sources):
        raise ValueError(f"polyak: {len(targets)} target parameters, {len(sources)} source parameters")
    with torch.no_grad():
        torch._foreach_lerp_(targets, sources, rate)
