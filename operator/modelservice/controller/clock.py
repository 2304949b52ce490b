"""The wall clock of the operator's status writes: one format for every timestamp it records
(conditions' lastTransitionTime, the autoscaler's lastScaleTime), RFC 3339 in UTC to the second,
as Kubernetes writes its own. Its own module so that the ModelService handlers and the autoscaling
loop, which the handlers start, both read it from below."""
from __future__ import annotations

import datetime


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
