"""The ServerApp (simulation and deployment alike): round loop, checkpoints, run outputs,
global evaluation through the task table. The coordinator's processes are
`medfed.server.coordinator`."""
