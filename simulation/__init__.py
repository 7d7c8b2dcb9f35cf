"""Public datasets split into virtual hospitals, run in Flower's Simulation Engine."""
