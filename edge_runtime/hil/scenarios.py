"""The scenarios: one function each, driving a `Session` through its phases and recording its criteria.

Every scenario also gets the suite's common criterion (nothing lost: every recorded step acknowledged
by the trainer by the end), so only what is particular to it is here. docs/hil.md explains each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from reachsafe.edge_runtime.hil.session import Session


@dataclass(frozen=True)
class Scenario:
    name: str
    proves: str
    run: Callable[[Session], None]
    needs: tuple[str, ...] = ()  # HilConfig fields it cannot run without (skipped otherwise)
    relay: bool = False  # reaches the trainer through a `TrainerRelay` (`Session.relay`)


def _keeps_time(s: Session, name: str = "keeps time") -> None:
    """Tick p99 within the period and few deadline misses, over the runtime's recent ticks."""
    m = s.probe()
    limit_ms = s.cfg.edge.period * s.cfg.edge.deadline_fraction * 1e3
    p99, ticks, misses = (
        m.get("edge/tick_ms_p99", float("inf")),
        m.get("edge/ticks", 0),
        m.get("edge/deadline_misses", 0),
    )
    s.check(
        name,
        p99 <= limit_ms and misses <= s.cfg.max_miss_rate * max(ticks, 1),
        f"tick p99 {p99:.1f} ms (deadline {limit_ms:.0f} ms), {int(misses)} of {int(ticks)} ticks missed "
        f"(at most {s.cfg.max_miss_rate:.0%})",
    )


def _no_brakes(s: Session, window_name: str, brakes: dict[str, int]) -> None:
    s.check(f"no brake during {window_name}", not brakes, f"brakes {brakes or 'none'}")


def nominal(s: Session) -> None:
    with s.window("run") as w:
        s.wait(s.cfg.settle_s + s.cfg.fault_s)
    expected = (s.cfg.settle_s + s.cfg.fault_s) * s.cfg.edge.rate_hz
    s.check(
        "records steps",
        w.delta("steps") >= 0.8 * expected,
        f"{int(w.delta('steps'))} steps of ~{expected:.0f} ticks",
    )
    _no_brakes(s, "the run", w.brakes())
    _keeps_time(s)


def bundle_swap(s: Session) -> None:
    msg = s.bundle_message(s.cfg.swap_bundle)
    s.wait(s.cfg.settle_s)
    before = s.version
    with s.window("swap") as w:
        s.push(msg)
        swapped = s.wait_for(lambda: s.version == msg.version, s.cfg.wait_s)
        s.wait(s.cfg.recover_s)
    s.check("swaps in", swapped, f"v{before} -> v{s.version} (pushed v{msg.version})")
    _no_brakes(s, "the swap", w.brakes())
    _keeps_time(s)


def tampered_bundle(s: Session) -> None:
    good = s.bundle_message(s.cfg.swap_bundle)
    graph = next(iter(good.files))
    corrupt = dict(good.files) | {graph: good.files[graph][:-1] + bytes([good.files[graph][-1] ^ 0xFF])}
    pushes = {
        "edited manifest": dataclasses.replace(good, manifest=good.manifest.replace(b"{", b"{ ", 1)),
        "altered graph": dataclasses.replace(good, files=corrupt),
    }
    s.wait(s.cfg.settle_s)
    before = s.version
    with s.window("pushes") as w:
        for msg in pushes.values():
            s.push(msg)
        refused = s.wait_for(lambda: w.delta("edge/bundles/rejected") >= len(pushes), s.cfg.wait_s)
        s.wait(s.cfg.recover_s)
    s.check(
        "refused",
        refused and s.version == before,
        f"{int(w.delta('edge/bundles/rejected'))} of {len(pushes)} pushes ({', '.join(pushes)}) rejected; "
        f"running v{s.version} (was v{before})",
    )
    _no_brakes(s, "the pushes", w.brakes())


def nonfinite_rollback(s: Session) -> None:
    msg = s.bundle_message(s.cfg.nonfinite_bundle)
    s.wait(s.cfg.settle_s)
    before = s.version
    with s.window("bad bundle") as w:
        s.push(msg)
        swapped = s.wait_for(lambda: msg.version in s.versions_seen, s.cfg.wait_s)
        rollback_s = s.cfg.edge.rollback.min_steps / s.cfg.edge.rate_hz + s.cfg.wait_s
        rolled = s.wait_for(
            lambda: w.delta("edge/bundles/rollbacks") >= 1 and s.version == before, rollback_s
        )
    s.check("swaps in", swapped, f"v{msg.version} went live: {swapped}")
    s.check(
        "brakes on non-finite outputs",
        w.brakes().get("nonfinite", 0) > 0,
        f"brakes {w.brakes() or 'none'}",
    )
    s.check(
        "rolls back",
        rolled,
        f"running v{s.version} (was v{before}), {int(w.delta('edge/bundles/rollbacks'))} rollback(s)",
    )
    s.check_recovered(w)


def _bridge_fault(kind: str, expect: tuple[str, ...]) -> Callable[[Session], None]:
    """A timed fault on the bridge: the runtime must brake for one of ``expect`` and recover after."""

    def run(s: Session) -> None:
        s.wait(s.cfg.settle_s)
        with s.window("fault") as w:
            s.bridge.inject(kind, s.cfg.fault_s, s.seed, s.cfg.fault_rate)
            s.wait(s.cfg.fault_s)
        braked = {k: v for k, v in w.brakes().items() if k in expect}
        s.check(
            f"brakes on {kind.replace('_', ' ')}",
            bool(braked),
            f"brakes {w.brakes() or 'none'} (expected {', '.join(expect)})",
        )
        s.check_recovered(w)

    return run


def estop(s: Session) -> None:
    s.wait(s.cfg.settle_s)
    s.estop.pressed.set()
    s.wait(2 * s.cfg.edge.period)  # the press is seen at the next signal read
    with s.window("e-stop") as w:
        s.wait(s.cfg.fault_s)
    s.estop.pressed.clear()
    held = int(w.delta("edge/ticks"))
    s.check(
        "brakes every tick while held",
        w.brakes().get("estop", 0) >= held - 1 and held > 0,
        f"{w.brakes().get('estop', 0)} e-stop brakes in {held} ticks",
    )
    s.check_recovered(w)


def hazard(s: Session) -> None:
    s.wait(s.cfg.settle_s)
    with s.window("before the hazard") as w:
        s.bridge.inject("hazard", 0.0, s.seed)
        s.wait(s.cfg.fault_s + s.cfg.recover_s)
    interventions, cost = int(w.delta("edge/interventions")), w.delta("cost")
    s.check(  # a policy that steers clear by itself needs no shield; one that drives in must be stopped
        "shield intervenes or the policy keeps clear",
        interventions > 0 or cost == 0,
        f"{interventions} interventions in {int(w.delta('steps'))} steps, cost {cost:g}",
    )
    s.check(
        "cost within the limit",
        w.delta("cost") <= s.cfg.cost_limit,
        f"cost {w.delta('cost'):g} after the placement (limit {s.cfg.cost_limit:g})",
    )
    s.numbers["hazard_cost"] = w.delta("cost")
    _no_brakes(s, "the approach", w.brakes())


def trainer_outage(s: Session) -> None:
    relay = s.relay
    assert relay is not None
    s.wait(s.cfg.settle_s)
    with s.window("outage") as w:
        relay.cut()
        unacked = 0.0
        end = s.cfg.outage_s
        while end > 0:  # sample the backlog while the trainer is away
            step = min(0.25, end)
            s.wait(step)
            end -= step
            unacked = max(unacked, s.probe().get("edge/unacked_steps", 0.0))
        relay.restore()
        caught_up = s.wait_for(lambda: s.probe().get("edge/unacked_steps", 1.0) == 0, s.cfg.wait_s)
    s.check("spools while the trainer is away", unacked > 0, f"up to {int(unacked)} steps waiting for an ACK")
    s.check(
        "catches up",
        caught_up,
        f"{int(s.probe().get('edge/unacked_steps', -1))} steps unacked after the outage",
    )
    _no_brakes(s, "the outage", w.brakes())
    _keeps_time(s, "keeps time without the trainer")


SCENARIOS: dict[str, Scenario] = {
    sc.name: sc
    for sc in (
        Scenario("nominal", "the runtime keeps its rate and deadline on this robot and every step reaches the trainer", nominal),
        Scenario("bundle_swap", "a new bundle goes live mid-episode without a brake or a missed deadline", bundle_swap, needs=("swap_bundle",)),
        Scenario("trainer_outage", "the loop runs on while the trainer is away; spooled steps arrive after, none lost", trainer_outage, relay=True),
        Scenario("camera_stall", "stale frames make the robot brake, and it drives on when frames are fresh", _bridge_fault("camera_stall", ("stale_frame",))),
        Scenario("drive_timeout", "an unanswered drive brakes the robot, which drives on when the drive answers", _bridge_fault("drive_timeout", ("drive_error", "deadline_streak", "watchdog"))),
        Scenario("estop", "no command moves the robot while the emergency stop is held; it drives on after", estop),
        Scenario("hazard", "put before a hazard, the robot keeps clear (by itself or through the shield) and the episode's cost stays within the limit", hazard),
        Scenario("tampered_bundle", "a bundle with an altered manifest or graph is refused; the running one stays", tampered_bundle, needs=("swap_bundle",)),
        Scenario("nonfinite_rollback", "a bundle whose outputs go non-finite is braked on and rolled back automatically", nonfinite_rollback, needs=("nonfinite_bundle",)),
        Scenario("sim_partition", "the robot brakes while the bridge is unreachable and drives on, every step delivered, once it answers", _bridge_fault("partition", ("camera_error", "signals_lost", "drive_error", "deadline_streak", "watchdog"))),
    )
}  # fmt: skip
