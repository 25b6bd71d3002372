"""Helpers for the edge tests: tiny agent graphs with the contract's inputs/outputs (built with
onnx.helper, no trainer needed) and in-memory hardware fakes; plus tests of those helpers."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import onnx
import zmq
from onnx import TensorProto, helper, numpy_helper

from reachsafe.hardware.base import Camera, Drive, Frame, Signals, TaskSignals
from reachsafe.protocol.codec import decode, encode
from reachsafe.protocol.messages import Ack, BundleStatus, Heartbeat, Hello, Steps

OPSET = 18


def make_agent_onnx(
    obs_shape: Sequence[int] = (16, 16, 3),
    action_dim: int = 2,
    primitives: Sequence[Sequence[float]] = ((1.0, 0.0), (0.0, 1.0)),
    *,
    a_on_bias: Sequence[float] | None = None,
    a_off_bias: Sequence[float] | None = None,
    q_r_bias: Sequence[float] = (0.0, 0.0),
    q_c_bias: Sequence[float] = (0.0, 0.0),
    q_h_bias: Sequence[float] | None = None,
    nan_above: float | None = None,
    seed: int = 0,
) -> bytes:
    """A small agent graph: a_on/a_off = tanh(linear(mean colour) + bias [+ 0.3·noise for a_on]);
    q_r/q_c/q_h are linear in each candidate action plus the given per-column biases. With
    `nan_above`, a_on is NaN for frames whose mean pixel value / 255 exceeds it (so warm-up on
    black frames passes and the failure shows only at run time)."""
    rng = np.random.default_rng(seed)
    a = action_dim
    prims = np.asarray(primitives, np.float32).reshape(-1, a)
    c = 3 + prims.shape[0]
    f32 = np.float32
    inits = {
        "scale": np.array(1 / 255, f32),
        "w_on": rng.normal(size=(3, a)).astype(f32),
        "b_on": np.asarray(a_on_bias if a_on_bias is not None else np.zeros(a), f32),
        "w_off": rng.normal(size=(3, a)).astype(f32),
        "b_off": np.asarray(a_off_bias if a_off_bias is not None else np.zeros(a), f32),
        "sigma": np.array(0.3, f32),
        "zero": np.array(0.0, f32),
        "nan_thr": np.array(np.inf if nan_above is None else nan_above, f32),
        "nan": np.array(np.nan, f32),
        "one": np.array(1.0, f32),
        "ax1k": np.array([1], np.int64),
        "prims": prims[None],
        "w_r": rng.normal(size=(a,)).astype(f32) * 0.1,
        "b_r": np.asarray(q_r_bias, f32),
        "w_c": rng.normal(size=(a,)).astype(f32) * 0.1,
        "b_c": np.asarray(q_c_bias, f32),
        "w_h": rng.normal(size=(a,)).astype(f32) * 0.1,
        "b_h": np.asarray(q_h_bias if q_h_bias is not None else -np.ones(c), f32),
        "ax1": np.array([1], np.int64),
        "ax2": np.array([2], np.int64),
        "ax12": np.array([1, 2], np.int64),
        "s0": np.array([0], np.int64),
        "s2": np.array([2], np.int64),
    }
    N = helper.make_node
    nodes = [
        N("Cast", ["obs"], ["obs_f"], to=TensorProto.FLOAT),
        N("Mul", ["obs_f", "scale"], ["obs_s"]),
        N("ReduceMean", ["obs_s", "ax12"], ["feat"], keepdims=0),
        N("MatMul", ["feat", "w_on"], ["h_on0"]),
        N("Add", ["h_on0", "b_on"], ["h_on1"]),
        N("Mul", ["noise", "sigma"], ["nz"]),
        N("Add", ["h_on1", "nz"], ["h_on2"]),
        N("Tanh", ["h_on2"], ["t_on"]),
        N("ReduceMean", ["feat", "ax1k"], ["bright"], keepdims=1),
        N("Greater", ["bright", "nan_thr"], ["is_bad"]),
        N("Where", ["is_bad", "nan", "one"], ["bad"]),
        N("Mul", ["t_on", "bad"], ["a_on"]),
        N("MatMul", ["feat", "w_off"], ["h_off0"]),
        N("Add", ["h_off0", "b_off"], ["h_off1"]),
        N("Tanh", ["h_off1"], ["a_off"]),
        N("Unsqueeze", ["a_on", "ax1"], ["c_on"]),
        N("Unsqueeze", ["a_off", "ax1"], ["c_off"]),
        N("Mul", ["c_on", "zero"], ["c_brake"]),
        N("Add", ["c_brake", "prims"], ["c_prims"]),
        N("Concat", ["c_on", "c_off", "c_brake", "c_prims"], ["candidates"], axis=1),
        N("Slice", ["candidates", "s0", "s2", "ax1"], ["pair"]),
        N("Mul", ["pair", "w_r"], ["pr"]),
        N("ReduceSum", ["pr", "ax2"], ["qr0"], keepdims=0),
        N("Add", ["qr0", "b_r"], ["q_r"]),
        N("Mul", ["pair", "w_c"], ["pc"]),
        N("ReduceSum", ["pc", "ax2"], ["qc0"], keepdims=0),
        N("Add", ["qc0", "b_c"], ["q_c"]),
        N("Mul", ["candidates", "w_h"], ["ph"]),
        N("ReduceSum", ["ph", "ax2"], ["qh0"], keepdims=0),
        N("Add", ["qh0", "b_h"], ["q_h"]),
    ]
    h, w, _ = obs_shape
    graph = helper.make_graph(
        nodes,
        "test_agent",
        [
            helper.make_tensor_value_info("obs", TensorProto.UINT8, ["B", h, w, 3]),
            helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["B", a]),
        ],
        [
            helper.make_tensor_value_info("a_on", TensorProto.FLOAT, ["B", a]),
            helper.make_tensor_value_info("a_off", TensorProto.FLOAT, ["B", a]),
            helper.make_tensor_value_info("q_r", TensorProto.FLOAT, ["B", 2]),
            helper.make_tensor_value_info("q_c", TensorProto.FLOAT, ["B", 2]),
            helper.make_tensor_value_info("q_h", TensorProto.FLOAT, ["B", c]),
            helper.make_tensor_value_info("candidates", TensorProto.FLOAT, ["B", c, a]),
        ],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


class FakeCamera(Camera):
    """Frames of a fixed colour; `stall()` freezes the timestamp so frames go stale."""

    def __init__(self, shape: Sequence[int] = (16, 16, 3)) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.frame_id = 0
        self.stalled_at: float | None = None

    @property
    def features(self) -> dict:
        return {"image_shape": self.shape}

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def stall(self) -> None:
        self.stalled_at = time.monotonic()

    def _read_latest(self) -> Frame:
        self.frame_id += 1
        t = self.stalled_at if self.stalled_at is not None else time.monotonic()
        img = np.full(self.shape, self.frame_id % 255, np.uint8)
        return Frame(image=img, t=t, frame_id=self.frame_id)


class FakeDrive(Drive):
    """Records every command: ("apply", action) or ("stop", None)."""

    def __init__(self, action_dim: int = 2) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.commands: list[tuple[str, np.ndarray | None]] = []

    @property
    def features(self) -> dict:
        return {"action_dim": self.action_dim}

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _apply(self, action: np.ndarray) -> None:
        self.commands.append(("apply", action))

    def _stop(self) -> None:
        self.commands.append(("stop", None))

    @property
    def stops(self) -> int:
        return sum(1 for kind, _ in self.commands if kind == "stop")


class FakeSignals(TaskSignals):
    """Reward 1 per read, cost from `cost`, an episode ends every `episode_len` reads; `estop` is reported as set."""

    def __init__(self, episode_len: int = 10, cost: float = 0.0) -> None:
        super().__init__()
        self.episode_len = episode_len
        self.cost = cost
        self.reads = 0
        self.episode = 0
        self.estop = False

    @property
    def features(self) -> dict:
        return {}

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _read(self) -> Signals:
        self.reads += 1
        done = self.reads % self.episode_len == 0
        s = Signals(
            reward=1.0,
            cost=self.cost,
            terminated=False,
            truncated=done,
            episode=self.episode,
            estop=self.estop,
        )
        if done:
            self.episode += 1
        return s


def test_helper_graph_runs_and_matches_the_contract() -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(make_agent_onnx(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"obs": np.zeros((4, 16, 16, 3), np.uint8), "noise": np.zeros((4, 2), np.float32)})
    shapes = {o.name: v.shape for o, v in zip(sess.get_outputs(), outs, strict=True)}
    assert shapes == {
        "a_on": (4, 2),
        "a_off": (4, 2),
        "q_r": (4, 2),
        "q_c": (4, 2),
        "q_h": (4, 5),
        "candidates": (4, 5, 2),
    }


class StubTrainer:
    """A trainer-side ROUTER on a background thread: stores STEPS batches de-duplicated by
    (robot_id, stream_id, seq), ACKs the contiguous prefix per stream, and can push messages.

    `stop()` / `start()` simulate a trainer outage; what was stored survives (durable storage)."""

    def __init__(self, port: int, ack: bool = True) -> None:
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.ack = ack
        self.batches: dict[tuple[str, str, int], tuple[int, int]] = {}  # key -> (first_step, n)
        self.duplicates = 0
        self.hellos: list = []
        self.statuses: list = []
        self.heartbeats: list = []
        self.identities: dict[str, bytes] = {}
        self._acked: dict[str, int] = {}
        self._outbox: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> StubTrainer:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def push(self, robot_id: str, msg) -> None:
        with self._lock:
            self._outbox.append((robot_id, encode(msg)))

    def steps_of(self, stream_id: str | None = None) -> list[int]:
        """Every stored step index (sorted), optionally of one stream."""
        with self._lock:
            items = list(self.batches.items())
        return sorted(
            i
            for (_, sid, _), (first, n) in items
            if stream_id in (None, sid)
            for i in range(first, first + n)
        )

    def _run(self) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.endpoint)
        try:
            while not self._stop.is_set():
                if sock.poll(10):
                    ident, data = sock.recv_multipart()
                    self._handle(sock, ident, decode(data))
                with self._lock:
                    out, self._outbox = self._outbox, []
                for robot_id, payload in out:
                    sock.send_multipart([self.identities[robot_id], payload])
        finally:
            sock.close(0)

    def _handle(self, sock, ident: bytes, msg) -> None:
        if isinstance(msg, Hello):
            self.identities[msg.robot_id] = ident
            self.hellos.append(msg)
            acked = self._acked.get(msg.stream_id, -1)
            self._acked[msg.stream_id] = max(acked, msg.resume_seq - 1)
        elif isinstance(msg, Steps):
            key = (msg.robot_id, msg.stream_id, msg.seq)
            with self._lock:
                if key in self.batches:
                    self.duplicates += 1
                else:
                    self.batches[key] = (msg.first_step, msg.n_steps)
                acked = self._acked.get(msg.stream_id, -1)
                while (msg.robot_id, msg.stream_id, acked + 1) in self.batches:
                    acked += 1
                self._acked[msg.stream_id] = acked
            if self.ack and acked >= 0:
                sock.send_multipart([ident, encode(Ack(stream_id=msg.stream_id, seq=acked))])
        elif isinstance(msg, BundleStatus):
            self.statuses.append(msg)
        elif isinstance(msg, Heartbeat):
            self.heartbeats.append(msg)


def make_test_bundle(
    directory, signing_key, version: int, parent: int | None = None, threshold: float = 0.0, **graph_kw
):
    """Sign and write a bundle with a `make_agent_onnx` graph; returns its path."""
    from reachsafe.protocol.bundle import write_bundle

    obs_shape = graph_kw.get("obs_shape", (16, 16, 3))
    manifest = {
        "version": version,
        "parent": parent,
        "obs": {"shape": list(obs_shape), "dtype": "uint8"},
        "action": {"dim": 2, "low": -1, "high": 1},
        "graph": {
            "file": "agent.onnx",
            "inputs": ["obs", "noise"],
            "outputs": ["a_on", "a_off", "q_r", "q_c", "q_h", "candidates"],
            "candidates": ["a_on", "a_off", "brake", "prim0", "prim1"],
        },
        "quantization": {"shipped": "fp32", "reason": "test", "report": {}},
        "shield": {"threshold": threshold},
        "training_step": version,
        "metrics": {},
    }
    return write_bundle(directory, manifest, {"agent.onnx": make_agent_onnx(**graph_kw)}, signing_key)
