"""Offline rendering: ``stemd render`` as a batch tool.

- ``job``: a matrix of prompts x seeds x lengths x models, validated, expanded into batches and takes
- ``worker``: one batch on one device (engine -> conform -> bar-exact take -> loudness -> stems)
- ``files``: takes on disk, written atomically, and the rule for a finished take
- ``manifest``: every finished take as JSON and CSV
- ``runner``: skip what is finished, render the rest here or on Ray (``cluster``), gather
- ``contact``: the contact sheet (HTML and a PNG from headless Chromium)
- ``loudness``, ``stems``, ``progress``: the optional parts

Nothing here imports torch, Ray or Demucs at import time.
"""
