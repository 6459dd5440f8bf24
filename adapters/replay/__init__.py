"""Recorded event scenarios: the format, a recorder, and a replay on a virtual clock.

Integrators debug transfers by replaying what the PBX actually sent; the
project uses the same scenarios (``scenarios/``) as its regression suite.
See ``scenarios/README.md`` for the format.
"""

from adapters.replay.format import Scenario, ScenarioError, discover, read
from adapters.replay.runner import Made, Report, replay
from adapters.replay.timeline import Entry

__all__ = ["Entry", "Made", "Report", "Scenario", "ScenarioError", "discover", "read", "replay"]
