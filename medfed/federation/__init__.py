"""What the coordinator and the sites both use to deploy: credentials and signatures, Flower's
CLI and processes, medfed's Flower app (FAB). Below both: imports nothing of either."""
