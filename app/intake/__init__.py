"""Intake: models and datasets entering the lab, shared by the routes, the demo and the CLI.

``models`` detects, preflights (in a sandboxed child process) and records model files;
``datasets`` parses, validates, stores and records dataset files (``dataset_formats`` reads
each upload format). Torch-free at import.
"""
