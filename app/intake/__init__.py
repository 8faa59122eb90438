"""Intake: models and datasets entering the lab, shared by the routes and the demo.

``models`` detects, preflights (in a sandboxed child process) and records model files;
``datasets`` stores and records dataset files, decoded and validated in a limited child
process (``app.modelio.dataset_preflight``; the decoders are ``app.modelio.dataset_formats``).
Torch-free and numpy-free at import.
"""
