"""Volumes on disk with their geometry: :mod:`.reading` (NIfTI, NRRD, MHA headers and voxels) and
:mod:`.writing` (the output grid from a model card, NIfTI/NRRD files and JSON sidecars)."""
