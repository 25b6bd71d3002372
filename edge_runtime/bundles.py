"""Bundles on the robot: verify, store, build off the control thread, swap at a tick boundary, roll back.

`BundleStore` is the on-disk side (STATE_DIR/bundles): one directory per verified version
(`v<N>/`, stored unchanged by `Bundle.write_to`) and `current.json` = {current, previous, bad}, where
`bad` lists the sha256 of the manifests of rolled-back bundles (a bundle, not a version number, is
bad: another trainer's v2 is a different bundle).
The CLI (`reachsafe edge install / rollback`) edits the store; a running runtime notices the
change and follows it.

`BundleManager` is the runtime side and the control loop's `PolicySource`: received BUNDLE
messages, hand installs and rollbacks are jobs for one worker thread that verifies (signature,
hashes, spec), builds and warms an `AgentSession`, and leaves it *pending*; the loop swaps it in
at the next tick boundary (a pointer assignment). It keeps the previous policy warm, watches the
cost, shield-intervention and inference-failure (NaN, errors) rates of a new bundle for `rollback.window_steps` steps and rolls back
when either exceeds its threshold and is worse than the replaced bundle's recent rate by more than
`rollback.min_degradation` (so a swap is not undone for a problem the old bundle had too). Every outcome is reported as BUNDLE_STATUS through `report`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import threading
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from reachsafe.edge_runtime.config import RollbackConfig
from reachsafe.edge_runtime.inference import AgentSession, InferenceError, SessionOptions
from reachsafe.edge_runtime.loop import ActivePolicy
from reachsafe.edge_runtime.metrics import Metrics
from reachsafe.edge_runtime.select import SelectionParams
from reachsafe.edge_runtime.steps import Step
from reachsafe.protocol.bundle import Bundle, load_bundle
from reachsafe.protocol.errors import BundleError
from reachsafe.protocol.files import write_json_atomically
from reachsafe.protocol.messages import BundleMessage, BundleStatus

log = logging.getLogger(__name__)

POINTER_FILE = "current.json"
RATE_NAMES = ("cost", "intervention", "inference failure")


class BundleRejected(RuntimeError):
    """A bundle failed verification or could not be built; the running bundle stays."""


class BundleStore:
    """Verified bundles on disk and which one is current / previous."""

    def __init__(self, root: str | os.PathLike, trusted_keys: Iterable[Ed25519PublicKey]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.trusted_keys = list(trusted_keys)

    @property
    def pointer_path(self) -> Path:
        return self.root / POINTER_FILE

    def pointer(self) -> dict[str, Any]:
        try:
            data = json.loads(self.pointer_path.read_text())
        except (OSError, ValueError):
            data = {}
        return {
            "current": data.get("current"),
            "previous": data.get("previous"),
            "bad": list(data.get("bad", [])),
        }

    def _write_pointer(self, data: dict[str, Any]) -> None:
        write_json_atomically(self.pointer_path, data, fsync=True, indent=None)  # off the control thread

    def path(self, version: int) -> Path:
        return self.root / f"v{version}"

    def versions(self) -> list[int]:
        return sorted(int(p.name[1:]) for p in self.root.glob("v*") if p.name[1:].isdigit())

    def store(self, bundle: Bundle) -> Path:
        """Keep a verified bundle (no-op if this version is already stored with the same manifest)."""
        target = self.path(bundle.version)
        if target.exists():
            existing = (target / "manifest.json").read_bytes() if (target / "manifest.json").exists() else b""
            if existing == bundle.manifest_bytes:
                return target
            shutil.rmtree(
                target
            )  # a different bundle under the same version number: the newest verified wins
        return bundle.write_to(target)

    def load(self, version: int, obs_shape: tuple[int, ...], action_dim: int) -> Bundle:
        """Verify a stored bundle again (disk contents may have changed since it was stored)."""
        return load_bundle(self.path(version), self.trusted_keys, obs_shape, action_dim)

    def set_current(self, version: int) -> None:
        p = self.pointer()
        if p["current"] != version:
            p["previous"], p["current"] = p["current"], version
        self._write_pointer(p)

    def manifest_sha256(self, version: int) -> str:
        return hashlib.sha256((self.path(version) / "manifest.json").read_bytes()).hexdigest()

    def is_bad(self, manifest: bytes) -> bool:
        return hashlib.sha256(manifest).hexdigest() in self.pointer()["bad"]

    def rollback(self) -> tuple[int, int]:
        """Make the previous bundle current and mark the current one bad; returns (from, to)."""
        p = self.pointer()
        if p["previous"] is None:
            raise BundleRejected("no previous bundle to roll back to")
        bad, good = p["current"], p["previous"]
        bad_hashes = {*p["bad"], self.manifest_sha256(bad)}
        older = [v for v in self.versions() if v < good and self.manifest_sha256(v) not in bad_hashes]
        self._write_pointer(
            {"current": good, "previous": older[-1] if older else None, "bad": sorted(bad_hashes)}
        )
        return bad, good


class _Rates:
    """Cost per step, shielded fraction and inference-failure fraction over the last `window` steps
    of one bundle version."""

    def __init__(self, version: int, window: int) -> None:
        self.version = version
        self.total = 0
        self._steps: deque[np.ndarray] = deque(maxlen=window)
        self._sums = np.zeros(3)

    def add(self, step: Step, inference_failed: bool) -> None:
        if len(self._steps) == self._steps.maxlen:
            self._sums -= self._steps[0]
        row = np.array([step.cost, float(step.shielded), float(inference_failed)])
        self._steps.append(row)
        self._sums += row
        self.total += 1

    def rates(self) -> np.ndarray:
        """[cost rate, intervention rate, failure rate]."""
        return self._sums / len(self._steps) if self._steps else np.zeros(3)


class BundleManager:
    """The loop's PolicySource; receives, verifies, builds, swaps, monitors and rolls back bundles."""

    def __init__(
        self,
        store: BundleStore,
        obs_shape: tuple[int, int, int],
        action_dim: int,
        robot_id: str,
        session_options: SessionOptions,
        rollback: RollbackConfig,
        metrics: Metrics,
        report: Callable[[BundleStatus], None] = lambda status: None,
    ) -> None:
        self.store = store
        self.obs_shape = obs_shape
        self.action_dim = action_dim
        self.robot_id = robot_id
        self.session_options = session_options
        self.rollback_cfg = rollback
        self.metrics = metrics
        self.report = report
        self.active: ActivePolicy | None = None
        self.previous: ActivePolicy | None = None
        self.versions_seen: list[int] = []
        self._pending: tuple[ActivePolicy, str, str] | None = None  # policy, status, reason
        self._pending_lock = threading.Lock()
        self._watching = (
            False  # the freshly swapped-in bundle (`_recent`) is on probation until its window passes
        )
        self._limits = np.array(
            [rollback.max_cost_rate, rollback.max_intervention_rate, rollback.max_failure_rate]
        )
        self._baseline = np.zeros(3)  # cost, intervention and failure rates of the bundle it replaced
        self._recent: _Rates | None = None  # the running bundle's recent rates (the next baseline)
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._pointer_mtime = 0.0
        self._newest_built = 0  # trainer versions only grow: a re-sent or older bundle is not rebuilt
        self._thread = threading.Thread(target=self._work, name="edge-bundles", daemon=True)
        self._stop = threading.Event()

    # ----- building -------------------------------------------------------------------
    def _build(self, bundle: Bundle) -> ActivePolicy:
        try:
            session = AgentSession.from_bundle(bundle, self.session_options)
        except InferenceError as exc:
            raise BundleRejected(f"bundle v{bundle.version} does not run: {exc}") from exc
        return ActivePolicy(
            session,
            bundle.version,
            float(bundle.manifest["shield"]["threshold"]),
            SelectionParams.from_manifest(bundle.manifest),
        )

    def load_initial(self, directory: str | os.PathLike | None) -> None:
        """Verify and start with the bundle in `directory` (or the store's current one), synchronously."""
        if directory is not None:
            bundle = load_bundle(directory, self.store.trusted_keys, self.obs_shape, self.action_dim)
            self.store.store(bundle)
        else:
            current = self.store.pointer()["current"]
            if current is None:
                raise BundleRejected(
                    f"no bundle installed in {self.store.root}; pass --bundle DIR or run `reachsafe edge install`"
                )
            bundle = self.store.load(current, self.obs_shape, self.action_dim)
        policy = self._build(bundle)
        self.store.set_current(bundle.version)
        self._pointer_mtime = self._mtime()
        self.active = policy
        self._recent = _Rates(policy.version, self.rollback_cfg.window_steps)
        self._newest_built = policy.version
        self.versions_seen.append(policy.version)
        self.metrics.gauge("edge/bundle_version", policy.version)
        log.info(
            "running bundle v%d (its shield threshold %.3f, κ_T %.3g, κ_c %.3g; the edge config may override them)",
            policy.version,
            policy.shield_threshold,
            policy.selection.kappa_t,
            policy.selection.kappa_c,
        )

    def start(self) -> BundleManager:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def submit(self, msg: BundleMessage) -> None:
        """A BUNDLE message arrived (uplink thread): verify and build it on the worker thread."""
        self._jobs.put(lambda: self._install_message(msg))

    def request_rollback(self, reason: str) -> None:
        self.metrics.count("edge/bundles/rollback_requests")
        self._jobs.put(lambda: self._rollback(reason))

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._jobs.get(timeout=1.0)
            except queue.Empty:
                self._follow_store()
                continue
            if job is None:
                return
            try:
                job()
            except Exception as exc:  # a broken job must not end bundle handling
                log.exception("bundle job failed: %s", exc)

    def _install_message(self, msg: BundleMessage) -> None:
        if self.store.is_bad(msg.manifest):
            self._status(msg.version, "rejected", "this version was rolled back on this robot before")
            return
        if msg.version <= self._newest_built:
            log.debug("bundle v%d already built (newest v%d); ignored", msg.version, self._newest_built)
            return
        try:
            bundle = Bundle.from_message(msg, self.store.trusted_keys, self.obs_shape, self.action_dim)
            policy = self._build(bundle)
            self.store.store(bundle)
        except (BundleError, BundleRejected, OSError) as exc:
            self.metrics.count("edge/bundles/rejected")
            log.error("rejected bundle v%d: %s", msg.version, exc)
            self._status(msg.version, "rejected", str(exc))
            return
        self._newest_built = msg.version
        self._set_pending(policy, "loaded")

    def _set_pending(self, policy: ActivePolicy, status: str, reason: str = "") -> None:
        with self._pending_lock:
            self._pending = (policy, status, reason)

    def _mtime(self) -> float:
        try:
            return self.store.pointer_path.stat().st_mtime
        except OSError:
            return 0.0

    def _follow_store(self) -> None:
        """Load the store's current bundle if the CLI changed it (install / rollback)."""
        mtime = self._mtime()
        if mtime == self._pointer_mtime:
            return
        self._pointer_mtime = mtime
        current = self.store.pointer()["current"]
        if current is None or (self.active is not None and current == self.active.version):
            return
        log.warning("the bundle store now points at v%s (changed by `reachsafe edge`); loading it", current)
        try:
            policy = self._build(self.store.load(current, self.obs_shape, self.action_dim))
        except (BundleError, BundleRejected, OSError) as exc:
            log.error("cannot load v%s from the store: %s; keeping the running bundle", current, exc)
            self._status(current, "rejected", str(exc))
            return
        rolled_back = self.active is not None and current < self.active.version
        self._set_pending(
            policy, "rolled_back" if rolled_back else "loaded", "rollback requested by the operator"
        )

    def _rollback(self, reason: str) -> None:
        try:
            bad, good = self.store.rollback()
        except BundleRejected as exc:
            log.error("cannot roll back (%s): %s", reason, exc)
            return
        self._pointer_mtime = self._mtime()
        if self.previous is not None and self.previous.version == good:
            policy = self.previous
        else:
            try:
                policy = self._build(self.store.load(good, self.obs_shape, self.action_dim))
            except (BundleError, BundleRejected, OSError) as exc:
                log.error("cannot load v%d to roll back to: %s", good, exc)
                return
        log.warning("rolling back v%d -> v%d: %s", bad, good, reason)
        self._set_pending(policy, "rolled_back", reason)

    def _status(self, version: int, status: str, reason: str = "") -> None:
        self.report(
            BundleStatus(robot_id=self.robot_id, version=version, status=status, reason=reason[:1000])
        )

    # ----- PolicySource (control thread) ----------------------------------------------
    def at_tick_boundary(self) -> ActivePolicy | None:
        if self._pending is not None:
            with self._pending_lock:
                pending, self._pending = self._pending, None
            policy, status, reason = pending
            old = self.active
            self.active = policy
            if status == "rolled_back":
                self.metrics.count("edge/bundles/rollbacks")
                self._status(
                    old.version if old else policy.version, "rolled_back", f"now v{policy.version}: {reason}"
                )
                self._watching = False
                self.previous = None
            else:
                self.previous = old
                enough = self._recent is not None and self._recent.total >= self.rollback_cfg.min_steps
                self._baseline = self._recent.rates() if enough else np.zeros(3)
                self._watching = old is not None and self.rollback_cfg.enabled
                self._status(policy.version, "loaded")
                self._jobs.put(lambda v=policy.version: self.store.set_current(v))
            self._recent = _Rates(policy.version, self.rollback_cfg.window_steps)
            self.versions_seen.append(policy.version)
            self.metrics.count("edge/bundles/swaps")
            self.metrics.gauge("edge/bundle_version", policy.version)
            log.info("swapped in bundle v%d (%s)", policy.version, status)
        return self.active

    def observe(self, step: Step, inference_failed: bool = False) -> None:
        """Track rates; roll a new bundle back if its cost, intervention or inference-failure rate is
        over its threshold and worse than the replaced bundle's by more than `min_degradation`."""
        w = self._recent
        if w is None or step.bundle_version != w.version:
            return
        w.add(step, inference_failed)
        cfg = self.rollback_cfg
        if not self._watching or w.total < cfg.min_steps:
            return
        rates, limits = w.rates(), self._limits
        worse = (rates > limits) & (rates > self._baseline + cfg.min_degradation)
        if worse.any():
            self._watching = False
            self.request_rollback(
                f"v{w.version} over {w.total} steps: "
                + ", ".join(
                    f"{name} rate {r:.3f} (max {lim}, previous {b:.3f})"
                    for name, r, lim, b in zip(RATE_NAMES, rates, limits, self._baseline, strict=True)
                )
            )
        elif w.total >= cfg.window_steps:
            log.info("bundle v%d passed its %d-step watch window", w.version, w.total)
            self._watching = False
