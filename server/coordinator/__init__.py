"""The coordinator's processes (`medfed server ...`): nginx's Fleet-only proxy, the SuperLink,
the run's submission, its state and status. The round loop itself is the ServerApp (`medfed.server`)."""
