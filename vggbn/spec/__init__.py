"""The sweep file's data model and every cross-field rule: pure validation, no I/O, no Ray.

model.py (SweepSpec, the stored spec), space.py (searched keys, adaptive seeds), resources.py
(per-trial resources, budget, cost), scheduler.py, pbt.py and workers.py (the PBT and
data-parallel rules), tracking.py. Loading a file is plan/load.py's.
"""

__all__ = ["CASE_KEY", "SweepSpec", "SweepSpecError", "flat_config", "stored_spec"]

from vggbn.spec.model import CASE_KEY, SweepSpec, SweepSpecError, flat_config, stored_spec  # noqa: E402
