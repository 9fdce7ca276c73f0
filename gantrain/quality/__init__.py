"""The quality benchmark (``make quality``): what gantrain trains against hand-written textbook loops.

``data`` generates and caches the data sets, ``textbook`` holds the loops to beat, ``score`` scores any
generator with gantrain's metrics, ``__main__`` runs the cases and writes docs/QUALITY.md.
"""
