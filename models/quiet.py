"""Loading without the libraries' chatter: diffusers' and transformers' progress bars and notes (stemd's own
keys in ``model_index.json``, accelerate's absence, torch's weight_norm deprecation, transformers' warning
that MusicGen's pad token lies past its vocabulary, which is how MusicGen is built) would break into
``stemd render``'s progress bar and the daemon's log. Errors still raise."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def quiet_loading():
    import warnings

    from transformers.utils import logging as transformers_logging

    try:
        from diffusers.utils import logging as diffusers_logging
    except ImportError:     # the MusicGen side without diffusers
        diffusers_logging = None
    before = transformers_logging.get_verbosity(), diffusers_logging.get_verbosity() if diffusers_logging else None
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    if diffusers_logging:
        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        transformers_logging.set_verbosity(before[0])
        transformers_logging.enable_progress_bar()
        if diffusers_logging:
            diffusers_logging.set_verbosity(before[1])
            diffusers_logging.enable_progress_bar()
