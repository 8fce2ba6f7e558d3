"""Guides: harmony and rhythm a take should follow, on the request's grid.

A guide is a list of :class:`~stemd.guides.notes.Note` placed in quarter notes from the take's first bar
(exact Fractions). It comes as chord symbols per bar (:mod:`stemd.guides.chords`) or as a Standard MIDI
File (:mod:`stemd.guides.smf`); :func:`guide_notes` reads either from a request and checks it against the
take before any work. The daemon renders the notes to audio (``stemd.models.guide_audio``). Core: numpy
and mido only, no torch.
"""

from stemd.guides.notes import MAX_GUIDE_BYTES, MAX_NOTES, GuideError, Note, check_notes, guide_notes  # noqa: F401
