"""An independent, held-out scenario generator for judging the anomaly detectors.

Written from the behaviour specification only: it shares the output types
(`Request`, `PolicyGrant`, `Simulation`, `Label`, `BenignCase`) with the main simulator
but none of its behaviour model, and none of the detectors' code or settings, so a
detector tuned on the main simulator meets behaviour it has never been fitted to.

    generate(seed, contractors=200, vendors=6, days=35, warmup_days=14) -> Simulation

Modules: `population` (vendors, projects, people, initial grants), `benign` (hard benign
cases), `behaviour` (day plans), `attacks` (the five families), `render` (requests).
"""

from gateway.anomaly.heldout.attacks import HELDOUT_FAMILIES
from gateway.anomaly.heldout.generate import generate, generate_world, plan_world

__all__ = ["HELDOUT_FAMILIES", "generate", "generate_world", "plan_world"]
