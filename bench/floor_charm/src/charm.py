#!/usr/bin/env python3
"""The floor of hook cost: an ops charm that does nothing, with our charm's endpoints.

It observes no event, so a hook costs only what every ops charm pays: starting Python,
importing ops, building the framework and model, emitting the event and saving state.
"""

import ops


class FloorCharm(ops.CharmBase):
    """Does nothing."""


if __name__ == "__main__":  # pragma: no cover
    ops.main(FloorCharm)
