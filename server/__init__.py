"""The ServerApp (simulation and deployment alike): round loop, checkpoints, run outputs, the
server's scoring. The coordinator's processes are `medfed.server.coordinator`."""
