"""Settings for the whole suite.

Hypothesis's defaults time every example (a 200 ms ``deadline``) and the
generation of the first ones (the ``too_slow`` health check).  On a loaded
2-core machine a pause of the process trips either at random, and Hypothesis
then reports the example as "unreliable timings" although the property held.
Wall-clock time says nothing about these properties (speed is measured by
``python -m bench``), so neither applies; a property found false is still
reported with the example that broke it.  Tests with their own ``@settings``
override only what they name.
"""

from hypothesis import HealthCheck, settings

settings.register_profile("xferd", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("xferd")

# PostgreSQL fixtures (pg_database, pg_url) for any test that needs the shared store.
from tests.pg import pg_database, pg_url  # noqa: E402, F401
