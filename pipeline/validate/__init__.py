"""Numerics: comparisons under ONNX Runtime and Polygraphy, the cleanup check, artifact validation."""
