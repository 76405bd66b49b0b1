"""Stage functions that fail the way real decoders do, for the worker pool's tests.

A module of its own: worker processes import it by name and must not import torch.
"""

from __future__ import annotations

import os
import signal
import time

from clipshift.stages import prepare_image


def die_on_poison(path, settings, keep_pixels, skip):
    """prepare_image, except that an image named poison* kills its process (a segfault)."""
    if "poison" in os.path.basename(str(path)):
        os.kill(os.getpid(), signal.SIGKILL)
    return prepare_image(path, settings, keep_pixels, skip)


def hang_on_poison(path, settings, keep_pixels, skip):
    """prepare_image, except that an image named poison* never returns (an endless loop)."""
    if "poison" in os.path.basename(str(path)):
        while True:
            time.sleep(1)
    return prepare_image(path, settings, keep_pixels, skip)
