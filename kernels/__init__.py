"""Kernels for the frame step, behind one op API (`kernels.ops`). Imports nothing of ours."""
