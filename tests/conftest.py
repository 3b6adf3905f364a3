import os

from hypothesis import HealthCheck, settings

# Property tests run a whole runtime per example: bound them in count, never in wall time
# (this machine is shared and noisy; speed is measured by bench/, not by tests).
settings.register_profile(
    "threadline", max_examples=int(os.environ.get("THREADLINE_EXAMPLES", "60")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("threadline")
