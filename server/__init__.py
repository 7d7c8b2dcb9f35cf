"""The coordinator: ServerApp, round loop, checkpoints and run outputs."""
