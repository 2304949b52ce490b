"""The autoscaling policy, pure: from demand samples and the current replica count to the count
the ModelService should have, and why.

Demand is requests in flight plus queued, summed over the model's ready pods (each pod's own
metrics: traffic that bypasses the gateway counts), plus the requests the gateway holds for the
model while no replica is ready. The rules (operator/modelservice/README.md, "Autoscaling"):

* recommended = ceil(demand averaged over `window_s` / target), clamped to [min, max];
* scale up as soon as the recommendation is above the current count (the average is past the
  current capacity), to it;
* scale down only to a count that carries the average with headroom: each sample also holds
  `headroom` = ceil(average / (target x (1 - tolerance))), clamped, the fewest replicas at which
  the average is at most (1 - tolerance) of their capacity. Down only when every sample of the
  last `delay_s` had a headroom count below the current one, no scale happened during that time,
  and every sample was complete (a pod or gateway that did not answer is never read as idle);
  then to the highest headroom count of those samples, removing at most half of the replicas (the
  last one goes once no demand was seen for the delay);
* a count outside [min, max] (the bounds changed) is brought inside at once.

The current count is the desired replica count, not the ready one: pods that are starting are
capacity that is coming, so demand waiting for them does not scale up a second time.

The tolerance is the hysteresis (the HPA's is 0.1): a count is left only when the average is
above its capacity or below (1 - tolerance) of the smaller count's, so a demand that wanders
within that band around a boundary (3 clients read at the pods as 2.7 to 3 with target 1) settles
on one count instead of going 3 -> 2 -> 3. Nothing here reads a clock; `now` and the sample times are seconds on any monotonic scale.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace


class Reason(str, enum.Enum):
    """Why the decision is what it is (status.autoscaling.reason)."""

    SCALED_UP = "ScaledUp"
    SCALED_DOWN = "ScaledDown"
    OUT_OF_BOUNDS = "OutOfBounds"            # the count was outside [min, max]
    STEADY = "Steady"                        # the recommendation is the current count
    WAITING_FOR_DELAY = "WaitingForScaleDownDelay"
    INCOMPLETE_SAMPLES = "IncompleteSamples"  # a pod or gateway did not answer within the delay


@dataclass(frozen=True)
class Policy:
    """spec.autoscaling with the engine's defaults filled in."""

    min_replicas: int
    max_replicas: int
    target: float            # requests in flight plus queued that one replica should carry
    window_s: float          # demand is averaged over this long
    delay_s: float           # scale-down waits until this long agreed
    tolerance: float = 0.0   # scale down only to a count the average fills to at most 1 - this

    def __post_init__(self) -> None:
        if not (0 <= self.min_replicas <= self.max_replicas and self.max_replicas >= 1):
            raise ValueError(f"replica bounds [{self.min_replicas}, {self.max_replicas}] are not 0 <= min <= max, max >= 1")
        if self.target <= 0 or self.window_s < 0 or self.delay_s < 0:
            raise ValueError("target must be positive, window and delay not negative")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance {self.tolerance} is not in [0, 1)")

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))

    def recommend(self, average: float) -> int:
        """ceil(average / target), clamped."""
        # A hair under an integer multiple (float sums) must not round up to one more replica.
        return self.clamp(math.ceil(round(max(average, 0.0) / self.target, 9)))

    def headroom(self, average: float) -> int:
        """ceil(average / (target x (1 - tolerance))), clamped: the fewest replicas that carry the
        average with the tolerance to spare, the lowest count a scale-down may go to. Never below
        recommend(average), so a scale-down never lands where the same average scales up."""
        return self.clamp(math.ceil(round(max(average, 0.0) / (self.target * (1 - self.tolerance)), 9)))


@dataclass(frozen=True)
class Sample:
    """One scrape: the demand seen at `at`, whether every ready pod and gateway answered, and
    the recommendation and headroom count (Policy.headroom) of the window average ending with it."""

    at: float
    demand: float
    complete: bool
    average: float = 0.0
    recommended: int = 0
    headroom: int = 0


@dataclass(frozen=True)
class History:
    """What the decision needs from the past: the samples of the last max(window, delay), since
    when sampling runs without a gap (`since`: a restarted operator starts anew, so its first
    scale-down waits a whole delay), and when the count last changed."""

    since: float
    samples: tuple[Sample, ...] = ()
    last_change: float | None = None


def observe(policy: Policy, history: History, at: float, demand: float, complete: bool) -> History:
    """`history` with the sample taken at `at`; samples older than the window and the delay are
    dropped."""
    keep = max(policy.window_s, policy.delay_s)
    samples = tuple(s for s in history.samples if s.at > at - keep and s.at < at)
    in_window = [s.demand for s in samples if s.at > at - policy.window_s] + [demand]
    average = sum(in_window) / len(in_window)
    sample = Sample(at=at, demand=demand, complete=complete, average=average,
                    recommended=policy.recommend(average), headroom=policy.headroom(average))
    return replace(history, samples=samples + (sample,))


def scaled(history: History, at: float) -> History:
    """`history` after the count changed at `at`."""
    return replace(history, last_change=at)


@dataclass(frozen=True)
class Decision:
    replicas: int                 # the count to have (== current: no change)
    recommended: int              # the latest sample's recommendation
    average: float                # the demand averaged over the window
    reason: Reason
    message: str = field(default="")


def decide(policy: Policy, history: History, current: int, now: float) -> Decision:
    """The replica count for `current` running (desired, starting included) after `history`,
    whose last sample is the newest; see the module docstring for the rules."""
    if not history.samples:
        return Decision(policy.clamp(current), policy.clamp(current), 0.0,
                        Reason.OUT_OF_BOUNDS if policy.clamp(current) != current else Reason.STEADY,
                        "no demand sample yet")
    last = history.samples[-1]
    target = f"target {policy.target:g} per replica"
    demand = f"demand {last.average:.2f} (averaged over {policy.window_s:g} s), {target}"
    bounded = policy.clamp(current)
    if bounded != current:
        return Decision(bounded, last.recommended, last.average, Reason.OUT_OF_BOUNDS,
                        f"{current} replicas is outside [{policy.min_replicas}, {policy.max_replicas}]; {demand}")
    if last.recommended > current:
        return Decision(last.recommended, last.recommended, last.average, Reason.SCALED_UP,
                        f"{current} -> {last.recommended}: {demand}")
    if last.headroom >= current:
        return Decision(current, last.recommended, last.average, Reason.STEADY, demand)
    # Fewer replicas would carry the average with headroom: only when the whole delay agreed.
    start = now - policy.delay_s
    recent = [s for s in history.samples if s.at > start or s is last]
    covered = history.since <= start and (history.last_change is None or history.last_change <= start)
    if not covered or not recent or any(s.headroom >= current for s in recent):
        since = max(history.since, history.last_change if history.last_change is not None else history.since)
        return Decision(current, last.recommended, last.average, Reason.WAITING_FOR_DELAY,
                        f"{demand}; fewer replicas only after {policy.delay_s:g} s agree "
                        f"(agreeing since {max(0.0, now - _agreeing_since(history, current, since)):.0f} s)")
    if not all(s.complete for s in recent):
        return Decision(current, last.recommended, last.average, Reason.INCOMPLETE_SAMPLES,
                        f"{demand}; a pod or gateway did not answer within the last {policy.delay_s:g} s, "
                        "so it is not read as idle")
    peak = max(s.headroom for s in recent)
    floor = math.ceil(current / 2) if current > 1 else 0
    replicas = max(peak, floor, policy.min_replicas)
    return Decision(replicas, last.recommended, last.average, Reason.SCALED_DOWN,
                    f"{current} -> {replicas}: {demand}, at most {1 - policy.tolerance:.0%} of "
                    f"{replicas} replicas' capacity for {policy.delay_s:g} s")


def _agreeing_since(history: History, current: int, floor: float) -> float:
    """Since when the samples' headroom counts have been below `current` (for the message only)."""
    since = history.samples[-1].at
    for s in reversed(history.samples):
        if s.headroom >= current:
            break
        since = s.at
    return max(since, floor)
