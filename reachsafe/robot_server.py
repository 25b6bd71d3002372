"""What every robot server of the hardware protocol needs, for servers outside reachsafe's simulator too.

It imports only numpy and :mod:`reachsafe.protocol` (numpy, msgpack): a server in another
environment (Safety-Gymnasium's, a robot's own) installs reachsafe without its dependencies
(``pip install --no-deps``) and uses it, as ``scripts/safety_gym_server.py`` and
``reachsafe.sim_bridge.server`` do. :class:`SignalLedger` is docs/protocol.md §4.2's acknowledged
signal reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from reachsafe.protocol.messages import HwReadSignals, HwSignals


@dataclass(frozen=True)
class Totals:
    """Reward and cost summed over some steps, and whether an episode ended in them."""

    reward: float = 0.0
    cost: float = 0.0
    terminated: bool = False
    truncated: bool = False

    def plus(self, later: Totals) -> Totals:
        return Totals(
            self.reward + later.reward,
            self.cost + later.cost,
            self.terminated or later.terminated,
            self.truncated or later.truncated,
        )


class SignalLedger:
    """One robot's task signals, kept until the client confirms it has them (docs/protocol.md §4.2).

    Steps add to the pending totals. Read n takes them as answer n, which is kept until a request
    names n in ``confirmed``: a repeated read n gets the same answer again, and a read with another
    id while answer n is unconfirmed (its reply was lost, or came after the client gave up) carries
    answer n's totals into the new answer. No reply that is lost or late loses a reward, a cost or
    an episode end.
    """

    def __init__(self) -> None:
        self.pending = Totals()
        self._answer: HwSignals | None = None

    def add(self, totals: Totals) -> None:
        self.pending = self.pending.plus(totals)

    def answer(self, ask: HwReadSignals, episode: int, step: int, resetting: bool) -> HwSignals:
        last, totals = self._answer, self.pending
        if last is not None and last.read_id != ask.confirmed:
            if last.read_id == ask.read_id:
                return last  # the same read again: the same answer
            totals = Totals(last.reward, last.cost, last.terminated, last.truncated).plus(totals)
        self.pending = Totals()
        self._answer = HwSignals(
            read_id=ask.read_id,
            reward=totals.reward,
            cost=totals.cost,
            terminated=totals.terminated,
            truncated=totals.truncated,
            episode=episode,
            step=step,
            resetting=resetting,
        )
        return self._answer
