"""Classification: image-level labels (binary, multi-class, multi-label) from MedMNIST or an image folder."""
