"""The command line, thin commands over the study and engine layers (python -m vaesweep)."""
