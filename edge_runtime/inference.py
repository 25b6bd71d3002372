"""onnxruntime session for the agent graph (docs/architecture.md, "The agent graph").

`AgentSession` is the one way anything runs `agent.onnx`: the robot's control loop, and the
trainer's evaluation (so what is evaluated is exactly what is shipped). It picks the best
installed execution provider (TensorRT EP with an engine cache, CUDA EP, CPU), always keeps the
CPU provider as a fallback, checks the graph against the contract when it loads, and checks every
output (shape, finiteness) when it runs; a failure is an `InferenceError` the loop turns into a brake.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

if TYPE_CHECKING:
    from reachsafe.edge_runtime.config import EdgeConfig

log = logging.getLogger(__name__)

INPUTS = ("obs", "noise")
OUTPUTS = ("a_on", "a_off", "q_r", "q_c", "q_h", "candidates")
#: Execution providers in order of preference; CPU is always appended as the fallback.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
DEFAULT_ENGINE_CACHE = Path.home() / ".cache" / "reachsafe" / "trt_engines"


class InferenceError(RuntimeError):
    """Running the agent graph failed; the control loop brakes on it."""


class ContractError(InferenceError):
    """The ONNX graph does not have the agent contract's inputs/outputs (docs/architecture.md)."""


class NonFiniteOutputError(InferenceError):
    """The graph produced NaN or inf: the bundle is broken (roll back or ship a new one)."""


@dataclass(frozen=True)
class AgentOutput:
    """One run of the agent graph. Without a batch axis when `act` got one frame, else [B, ...].

    `q_r`/`q_c` column 0 is at `a_on`, column 1 at `a_off`; `q_h` and `candidates` follow the
    candidate order `[a_on, a_off, brake, primitives...]`.
    """

    a_on: np.ndarray
    a_off: np.ndarray
    q_r: np.ndarray
    q_c: np.ndarray
    q_h: np.ndarray
    candidates: np.ndarray


@dataclass(frozen=True)
class SessionOptions:
    """How to build a session. `providers` restricts/orders the EPs (names or aliases cpu/cuda/tensorrt);
    empty means "best installed"."""

    intra_op_threads: int = 1
    providers: tuple[str, ...] = ()
    engine_cache_dir: Path = DEFAULT_ENGINE_CACHE
    warmup_runs: int = 3
    trt_fp16: bool = False  # fp16 engines change Q_h numerics: opt in only after checking shield agreement

    @classmethod
    def from_config(cls, cfg: EdgeConfig, warmup_runs: int = 3) -> SessionOptions:
        """The options the runtime builds its sessions with (doctor uses the same, so it checks those)."""
        return cls(
            cfg.intra_op_threads, tuple(cfg.providers), cfg.engine_cache_dir, warmup_runs, cfg.trt_fp16
        )


def available_providers() -> list[str]:
    """The installed providers this runtime knows how to use, best first (CPU always last)."""
    installed = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in installed or p == "CPUExecutionProvider"]


def choose_providers(requested: Sequence[str] = ()) -> list[str]:
    """Resolve `requested` (names or aliases) against what is installed; CPU is always the last entry."""
    if not requested:
        return available_providers()
    installed = set(ort.get_available_providers())
    chosen: list[str] = []
    for name in requested:
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full not in PREFERRED_PROVIDERS:
            raise ValueError(f"unknown execution provider {name!r}; use one of {sorted(PROVIDER_ALIASES)}")
        if full not in installed:
            log.warning("execution provider %s is not installed here; skipping it", full)
        elif full not in chosen:
            chosen.append(full)
    if "CPUExecutionProvider" in chosen:
        chosen.remove("CPUExecutionProvider")
    return [*chosen, "CPUExecutionProvider"]


def device_fingerprint() -> str:
    """A short string naming the accelerator (GPU name + driver, or Jetson model, or CPU arch)."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader", "-i", "0"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    model = Path("/proc/device-tree/model")
    if model.exists():
        return model.read_bytes().rstrip(b"\0").decode(errors="replace")
    return platform.machine()


def tensorrt_version() -> str:
    """Version of the TensorRT library next to onnxruntime, or "unknown"."""
    try:
        import tensorrt  # noqa: PLC0415  (only on machines that have TensorRT)

        return str(tensorrt.__version__)
    except ImportError:
        return "unknown"


def engine_cache_key(model: bytes, fp16: bool = False) -> str:
    """TensorRT engines are only valid for one model, precision, onnxruntime build, TensorRT build and GPU."""
    h = hashlib.sha256()
    parts = (
        hashlib.sha256(model).hexdigest(),
        f"fp16={fp16}",
        ort.__version__,
        tensorrt_version(),
        device_fingerprint(),
    )
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _provider_options(providers: list[str], model: bytes, options: SessionOptions) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    for p in providers:
        if p == "TensorrtExecutionProvider":
            cache = Path(options.engine_cache_dir) / engine_cache_key(model, options.trt_fp16)
            cache.mkdir(parents=True, exist_ok=True)
            result.append(
                {
                    "trt_engine_cache_enable": "True",
                    "trt_engine_cache_path": str(cache),
                    "trt_timing_cache_enable": "True",
                    "trt_timing_cache_path": str(cache),
                    "trt_fp16_enable": str(options.trt_fp16),
                }
            )
        else:
            result.append({})
    return result


class AgentSession:
    """A warmed-up onnxruntime session for one agent graph."""

    def __init__(self, model: bytes, options: SessionOptions | None = None, name: str = "agent.onnx") -> None:
        self.options = options or SessionOptions()
        self.name = name
        self.model_sha256 = hashlib.sha256(model).hexdigest()
        providers = choose_providers(self.options.providers)
        self._session = self._build(model, providers)
        self.providers: list[str] = list(self._session.get_providers())
        self._check_contract()
        self.warmup_ms = self._warm_up()
        log.info(
            "loaded %s (sha256 %s…) on %s, %d intra-op thread(s), warm-up %.1f ms",
            name,
            self.model_sha256[:12],
            self.providers[0],
            self.options.intra_op_threads,
            self.warmup_ms,
        )

    # ----- construction ---------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path, options: SessionOptions | None = None) -> AgentSession:
        path = Path(path)
        try:
            model = path.read_bytes()
        except OSError as exc:
            raise InferenceError(f"cannot read agent graph {path}: {exc.strerror}") from None
        return cls(model, options, name=str(path))

    @classmethod
    def from_bundle(cls, bundle: Any, options: SessionOptions | None = None) -> AgentSession:
        """Session for a verified `reachsafe.protocol.bundle.Bundle`; checks the graph against the manifest's obs/action spec."""
        manifest = bundle.manifest
        graph_file = manifest["graph"]["file"]
        session = cls(bundle.files[graph_file], options, name=f"bundle v{manifest['version']}:{graph_file}")
        expected_obs = tuple(int(d) for d in manifest["obs"]["shape"])
        expected_dim = int(manifest["action"]["dim"])
        if session.obs_shape != expected_obs or session.action_dim != expected_dim:
            raise ContractError(
                f"{session.name}: graph has obs {session.obs_shape} / action dim {session.action_dim}, but the "
                f"manifest says obs {expected_obs} / action dim {expected_dim}; re-export the bundle"
            )
        return session

    def _build(self, model: bytes, providers: list[str]) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        try:
            return ort.InferenceSession(
                model,
                sess_options=so,
                providers=providers,
                provider_options=_provider_options(providers, model, self.options),
            )
        except Exception as exc:  # onnxruntime raises several unrelated types
            if providers != ["CPUExecutionProvider"]:
                log.warning("building %s on %s failed (%s); falling back to CPU", self.name, providers, exc)
                return self._build(model, ["CPUExecutionProvider"])
            raise ContractError(f"{self.name}: onnxruntime cannot load the graph: {exc}") from exc

    def _check_contract(self) -> None:
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        if set(inputs) != set(INPUTS) or set(outputs) != set(OUTPUTS):
            raise ContractError(
                f"{self.name}: inputs {sorted(inputs)} / outputs {sorted(outputs)} do not match the agent "
                f"contract {list(INPUTS)} / {list(OUTPUTS)} (docs/architecture.md); re-export the graph"
            )
        obs, noise = inputs["obs"], inputs["noise"]
        if (
            obs.type != "tensor(uint8)"
            or len(obs.shape) != 4
            or not all(isinstance(d, int) for d in obs.shape[1:])
        ):
            raise ContractError(
                f"{self.name}: input obs must be uint8 [B, H, W, 3] with fixed H, W; got {obs.type} {obs.shape}"
            )
        if noise.type != "tensor(float)" or len(noise.shape) != 2 or not isinstance(noise.shape[1], int):
            raise ContractError(
                f"{self.name}: input noise must be float32 [B, A]; got {noise.type} {noise.shape}"
            )
        self.obs_shape: tuple[int, int, int] = tuple(obs.shape[1:])  # type: ignore[assignment]
        self.action_dim: int = int(noise.shape[1])
        self._output_names = list(OUTPUTS)

    def _warm_up(self) -> float:
        t0 = time.monotonic()
        obs = np.zeros(self.obs_shape, np.uint8)
        for _ in range(max(1, self.options.warmup_runs)):
            out = self.act(obs)
        self.num_candidates = int(out.q_h.shape[-1])
        return (time.monotonic() - t0) * 1e3

    # ----- running --------------------------------------------------------------------
    def act(self, obs: np.ndarray, noise: np.ndarray | None = None) -> AgentOutput:
        """Run the graph on one frame [H, W, 3] or a batch [B, H, W, 3] of raw uint8 frames.

        `noise` is standard normal of shape [A] / [B, A] (None: zeros, i.e. greedy actions).
        Raises `InferenceError` on a runtime failure and `NonFiniteOutputError` on NaN/inf.
        """
        obs = np.asarray(obs)
        single = obs.ndim == 3
        batch = obs[None] if single else obs
        if batch.dtype != np.uint8 or batch.shape[1:] != self.obs_shape:
            raise InferenceError(
                f"{self.name}: obs must be uint8 {self.obs_shape} (or a batch of them), got {obs.dtype} {obs.shape}"
            )
        n = batch.shape[0]
        if noise is None:
            z = np.zeros((n, self.action_dim), np.float32)
        else:
            z = np.asarray(noise, np.float32).reshape(n, self.action_dim)
        try:
            raw = self._session.run(self._output_names, {"obs": np.ascontiguousarray(batch), "noise": z})
        except Exception as exc:  # onnxruntime raises Fail/InvalidArgument/RuntimeException...
            raise InferenceError(f"{self.name}: onnxruntime failed: {exc}") from exc
        out = dict(zip(self._output_names, raw, strict=True))
        self._validate(out, n)
        if single:
            out = {k: v[0] for k, v in out.items()}
        return AgentOutput(**out)

    def _validate(self, out: dict[str, np.ndarray], n: int) -> None:
        a = self.action_dim
        expected = {"a_on": (n, a), "a_off": (n, a), "q_r": (n, 2), "q_c": (n, 2)}
        for name, shape in expected.items():
            if out[name].shape != shape:
                raise InferenceError(
                    f"{self.name}: output {name} has shape {out[name].shape}, expected {shape}"
                )
        c = out["q_h"].shape[-1] if out["q_h"].ndim == 2 else -1
        if out["q_h"].shape != (n, c) or out["candidates"].shape != (n, c, a) or c < 3:
            raise InferenceError(
                f"{self.name}: q_h {out['q_h'].shape} / candidates {out['candidates'].shape} must be [B, C] / "
                f"[B, C, {a}] with C >= 3 (a_on, a_off, brake, primitives...)"
            )
        for name, value in out.items():
            if not np.all(np.isfinite(value)):
                raise NonFiniteOutputError(
                    f"{self.name}: output {name} contains NaN or inf; the bundle is broken"
                )
