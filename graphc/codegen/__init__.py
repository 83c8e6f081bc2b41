"""Code generation: contexts for templates and expression printers, per backend."""
