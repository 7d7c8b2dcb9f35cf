"""A site: its ClientApp, local training and readers for its own image files."""
