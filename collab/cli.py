"""Entry-point plumbing shared by every script: one logging set-up and one-line errors."""
from __future__ import annotations

import logging
import signal
import sys
from typing import Callable

from collab.errors import UserError

logger = logging.getLogger(__name__)

# Libraries that narrate routine events at INFO; their warnings still show.
_QUIET_LOGGERS = ("filelock", "urllib3", "httpx", "datasets", "huggingface_hub", "wandb", "asyncio")


def setup_logging(level: int = logging.INFO) -> None:
    """Route all logs (ours and hivemind's) through hivemind's readable handler on the root logger."""
    from hivemind.utils.logging import use_hivemind_log_handler

    use_hivemind_log_handler("in_root_logger")
    logging.getLogger().setLevel(level)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main(): UserError becomes one line on stderr (exit 2); Ctrl-C exits 130 quietly.

    SIGTERM is turned into KeyboardInterrupt so that `finally:` blocks shut peers down (a Python process killed
    without them leaves its libp2p daemon behind).
    """
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        logger.info("Interrupted, shutting down")
        sys.exit(130)


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
