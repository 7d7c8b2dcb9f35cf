"""Segmentation: label maps over 2D images or 3D volumes (DRIVE, masks, NIfTI, DICOM) with U-Nets."""
