"""Metric networks written in the project: I3D (FVD) and the FID Inception-v3."""
