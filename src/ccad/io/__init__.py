"""Layer 1, input and output: reading X-ray files, walking inputs, atomic writes, ONNX sessions, pictures.

Imports nothing of ccad but :mod:`ccad.errors`.
"""
