"""The trainer on a device: the choice of device and threads, batches, bf16, and the same losses as
before the CPU path was made leaner. Tests marked ``gpu`` need CUDA and skip cleanly without it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from reachsafe.trainer.algos.config import ComputeConfig
from reachsafe.trainer.algos.offline.config import ImagineConfig, NetworkConfig, OfflineConfig
from reachsafe.trainer.algos.offline.learner import OfflineLearner, agent_spec_for
from reachsafe.trainer.algos.online.config import OnlineConfig, OnlineWorldModelConfig
from reachsafe.trainer.algos.online.learner import OnlineLearner
from reachsafe.trainer.models.device import (
    DeviceError,
    _cgroup_cpu_quota,
    choose_threads,
    free_cpu_cores,
    resolve_device,
    to_device,
    to_floats,
)
from reachsafe.trainer.models.networks import on_cpu
from tests.fixtures.point_dataset import make_point_dataset

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
OFFLINE_KEYS = ("train/loss_q_r", "train/loss_q_h", "train/actor_loss", "wm/consistency")
ONLINE_KEYS = ("online/loss_q_r", "online/loss_q_h", "online/loss_actor")
#: losses at updates 1, 10, 20 and 40 of :func:`loss_curves` as the trainer of commit ac6cd85 computed
#: them, before devices and the leaner CPU path (one CPU thread)
BEFORE = {
    "offline": [
        [0.0599844642, 228.399658, 227.142044, 2.56064517],
        [0.0211700965, 227.179825, 158.544998, 2.34533249],
        [0.0263818502, 339.032135, 171.312973, 2.09573456],
        [0.0108953165, 672.214233, 80.9983597, 1.56295632],
    ],
    "online": [
        [0.0108812805, 167.952606, -0.0632630736],
        [0.00415806845, 83.6464233, -0.0554204285],
        [0.00699809659, 166.530502, -0.0592315383],
        [0.00453480706, 41.2624588, -0.0570799559],
    ],
}
LOGGED = [0, 9, 19, 39]


@pytest.fixture(autouse=True)
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def loss_curves(device: torch.device, compute: ComputeConfig | None = None) -> dict[str, np.ndarray]:
    """40 offline updates (world model; imagination from update 8) on 32×32 frames, then 40 online
    updates of the finalised agent; the losses of every update."""
    compute = compute or ComputeConfig()
    ds = make_point_dataset(episodes=12, length=20, seed=0, image_size=32)
    cfg = OfflineConfig(
        batch_size=8, network=NetworkConfig(hidden_dim=32, latent_dim=16, cnn_channels=4),
        imagine=ImagineConfig(start=8), seed=3, compute=compute,
    )  # fmt: skip
    offline = OfflineLearner(agent_spec_for(ds, cfg), cfg, device)
    rng = np.random.default_rng(0)
    off = [offline.update(ds.sample_sequences(8, offline.horizon, rng)) for _ in range(40)]
    torch.manual_seed(4)
    online = OnlineLearner(
        offline.finalize(),
        OnlineConfig(
            batch_size=16, seed=4, compute=compute, world_model=OnlineWorldModelConfig(enabled=False)
        ),
        device=device,
    )
    on = [online.update(ds.sample(16, rng)) for _ in range(40)]
    return {
        "offline": np.array([[m[k] for k in OFFLINE_KEYS] for m in off]),
        "online": np.array([[m[k] for k in ONLINE_KEYS] for m in on]),
    }


def test_same_seed_gives_the_losses_of_the_trainer_before_the_leaner_cpu_path() -> None:
    """Encoding only the frames whose latents are used and the fused Adam step change the order of
    floating-point sums, nothing else: the losses agree within rtol 1e-5."""
    curves = loss_curves(torch.device("cpu"))
    for part, want in BEFORE.items():
        np.testing.assert_allclose(curves[part][LOGGED], want, rtol=1e-5, err_msg=part)


def test_bf16_autocast_trains_close_to_fp32() -> None:
    """bf16 keeps fp32 weights and optimiser state; its losses stay within 10 % of fp32's over 80
    updates (a switch, off by default: not the same numbers)."""
    curves = loss_curves(torch.device("cpu"), ComputeConfig(bf16=True))
    for part, want in BEFORE.items():
        assert np.all(np.isfinite(curves[part])), part
        np.testing.assert_allclose(curves[part][LOGGED], want, rtol=0.1, err_msg=part)


def test_the_device_is_chosen_or_refused_by_name() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="cpu, cuda"):
        resolve_device("tpu")
    with pytest.raises(DeviceError):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_auto_threads_come_from_the_cores_this_process_may_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (allowed + 0.4, 0.0, 0.0))
    assert free_cpu_cores() == 1  # every core busy with other work: one thread
    monkeypatch.setattr(os, "getloadavg", lambda: (0.4, 0.0, 0.0))
    cores = free_cpu_cores()
    assert 1 <= cores <= allowed
    assert choose_threads(3) == 3
    assert choose_threads(0) == cores and choose_threads(0, share=cores + 1) == 1
    assert choose_threads(0, reserve=1) == max(1, cores - 1)
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    (tmp_path / "open").write_text("max 100000\n")
    assert _cgroup_cpu_quota(tmp_path / "cpu.max") == 1.5
    assert _cgroup_cpu_quota(tmp_path / "open") is None and _cgroup_cpu_quota(tmp_path / "none") is None


def test_cpu_batches_and_agents_are_used_in_place() -> None:
    batch = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert to_device(batch, torch.device("cpu")).data_ptr() == batch.ctypes.data
    ds = make_point_dataset(episodes=2, length=5, image_size=16)
    cfg = OfflineConfig(network=NetworkConfig(hidden_dim=16, latent_dim=8, cnn_channels=4))
    agent = OfflineLearner(agent_spec_for(ds, cfg), cfg).agent
    assert on_cpu(agent) is agent
    assert to_floats({"a": torch.tensor(0.1), "b": torch.tensor(2, dtype=torch.int64)}) == {
        "a": float(torch.tensor(0.1)),
        "b": 2.0,
    }


def test_train_offline_refuses_a_missing_device_or_an_uneven_split_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from reachsafe.cli import main
    from tests.fixtures.point_dataset import write_hdf5

    write_hdf5(make_point_dataset(episodes=2, length=8, image_size=16), tmp_path / "ds.h5")
    base = ["train", "offline", "--dataset", str(tmp_path / "ds.h5"), "--out", str(tmp_path / "run")]
    assert main([*base, "--device", "tpu"]) == 2 and "auto, cpu, cuda or cuda:N" in caplog.text
    assert main([*base, "--nproc", "3", "--batch-size", "8"]) == 2 and "divide --batch-size 8" in caplog.text
    if not torch.cuda.is_available():
        assert main([*base, "--nproc", "2", "--device", "cuda"]) == 2 and "no CUDA GPU" in caplog.text
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.gpu
@needs_cuda
def test_cuda_learners_follow_the_cpu_losses() -> None:
    """The same seed on a GPU: the same batches and random draws, losses within 2 % (TF32 convolutions)."""
    curves = loss_curves(torch.device("cuda"))
    for part, want in BEFORE.items():
        np.testing.assert_allclose(curves[part][LOGGED], want, rtol=0.02, err_msg=part)


@pytest.mark.gpu
@needs_cuda
def test_cuda_bf16_trains_finite_losses() -> None:
    curves = loss_curves(torch.device("cuda"), ComputeConfig(bf16=True))
    assert all(np.all(np.isfinite(c)) for c in curves.values())


@pytest.mark.gpu
@needs_cuda
def test_a_cuda_agent_exports_from_fp32_cpu_weights(tmp_path: Path) -> None:
    from reachsafe.protocol.keys import generate_keys
    from reachsafe.trainer.export.onnx import build_bundle

    ds = make_point_dataset(episodes=2, length=8, image_size=32)
    cfg = OfflineConfig(network=NetworkConfig(hidden_dim=16, latent_dim=8, cnn_channels=4))
    agent = OfflineLearner(agent_spec_for(ds, cfg), cfg, torch.device("cuda")).agent
    copy = on_cpu(agent)
    assert copy is not agent and all(t.device.type == "cpu" for t in copy.state_dict().values())
    for name, t in agent.state_dict().items():
        assert torch.equal(copy.state_dict()[name], t.cpu())
    generate_keys(tmp_path / "keys")
    build_bundle(copy, tmp_path / "bundle", 1, None, tmp_path / "keys" / "signing.key")  # parity-checked


@pytest.mark.slow
def test_compiled_learners_give_the_eager_losses() -> None:
    """torch.compile fuses the encoders' kernels: the same losses up to floating-point reassociation."""
    curves = loss_curves(torch.device("cpu"), ComputeConfig(compile=True))
    for part, want in BEFORE.items():
        np.testing.assert_allclose(curves[part][LOGGED], want, rtol=1e-4, err_msg=part)
