"""Synthesis: a class-conditional DCGAN that learns to generate a dataset's images (the ``gan`` task)."""
