"""gantrain: a Hydra-configured GAN trainer. Run as a console script, Ctrl-C before ``main`` runs (the imports
take seconds) exits 130 with one line, not a traceback (gantrain/interrupts.py)."""

from gantrain import interrupts as _interrupts

if _interrupts.console_script():
    _interrupts.install(_interrupts.console_script())
