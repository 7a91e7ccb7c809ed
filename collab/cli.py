"""Entry-point plumbing shared by every script: one logging set-up and one-line errors."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import warnings
from concurrent.futures import InvalidStateError
from typing import Callable

from collab.errors import UserError

logger = logging.getLogger(__name__)

# Libraries that narrate routine events at INFO (hivemind's matchmaking: several lines per round); warnings still show.
_QUIET_LOGGERS = ("hivemind.averaging.matchmaking", "filelock", "urllib3", "httpx", "datasets", "huggingface_hub", "wandb", "asyncio")


def _routine_network_errors() -> tuple[type, ...]:
    from hivemind.averaging.matchmaking import MatchmakingException
    from hivemind.averaging.partition import AllreduceException
    from hivemind.p2p.p2p_daemon_bindings.utils import P2PDaemonError, P2PHandlerError

    return AllreduceException, MatchmakingException, P2PDaemonError, P2PHandlerError, TimeoutError, ConnectionError


_ROUTINE_NETWORK_ERRORS: tuple[type, ...] = ()


def setup_logging(level: int = logging.INFO) -> None:
    """Route all logs (ours and hivemind's) through hivemind's readable handler on the root logger."""
    from hivemind.utils.logging import use_hivemind_log_handler

    global _ROUTINE_NETWORK_ERRORS
    use_hivemind_log_handler("in_root_logger")
    _ROUTINE_NETWORK_ERRORS = _routine_network_errors()
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers:
        handler.addFilter(_readable_hivemind_records)
    # hivemind fast-forwards the LR schedule to the global step after downloading state (and aux peers never
    # step their optimizer); torch warns about the call order every time, which is expected here.
    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
    _hide_checkpoint_progress_bars()
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _readable_hivemind_records(record: logging.LogRecord) -> bool:
    """Keep logs readable: drop hivemind's shutdown noise, and shorten its recoverable network errors.

    Dropped (nothing a user can act on): the DHT process failing to unpickle a request from an averager process
    that already exited, and asyncio reporting tasks of a stopped event loop. Shortened to one WARNING line
    without a traceback: a peer that vanished (failed dial, failed download, no group found) is routine in a
    swarm, and hivemind already retries or falls back; the message names the peer and the error.
    """
    error = record.exc_info[1] if record.exc_info else None
    if record.name == "hivemind.dht.dht" and isinstance(error, FileNotFoundError):
        return False
    if record.name == "asyncio" and "Task was destroyed but it is pending" in record.getMessage():
        return False
    if record.name == "asyncio" and isinstance(error, InvalidStateError) and "CANCELLED" in str(error):
        # hivemind's averager sets the result of a round whose control was cancelled meanwhile (a race in 1.1.12)
        record.msg, record.args = "An averaging round finished after it had been cancelled (harmless)", ()
        _as_one_warning_line(record)
    if record.name.startswith("hivemind.") and isinstance(error, _ROUTINE_NETWORK_ERRORS):
        _as_one_warning_line(record)
    if record.name == "asyncio" and _is_unretrieved_round_error(record, error):
        # a round that lost a peer midway: hivemind fails the round's futures and stream tasks and never reads them
        detail = " ".join(filter(None, (type(error).__name__, str(error))))
        record.msg, record.args = f"An averaging round lost a peer midway ({detail})", ()
        _as_one_warning_line(record)
    return True


def _is_unretrieved_round_error(record: logging.LogRecord, error: BaseException | None) -> bool:
    message = record.getMessage()
    unretrieved = message.startswith(("Task exception was never retrieved", "Future exception was never retrieved"))
    return unretrieved and isinstance(error, (*_ROUTINE_NETWORK_ERRORS, asyncio.CancelledError))


def _as_one_warning_line(record: logging.LogRecord) -> None:
    record.exc_info, record.exc_text = None, None
    record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)


def _hide_checkpoint_progress_bars() -> None:
    """transformers draws a progress bar for every checkpoint written; in a peer's log it is noise."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main(): UserError becomes one line on stderr (exit 2); Ctrl-C exits 130 quietly.

    SIGTERM and SIGINT raise KeyboardInterrupt so that `finally:` blocks shut peers down (a Python process killed
    without them leaves its libp2p daemon behind). hivemind swallows exceptions inside some of its calls, so the
    signal also sets `stop_requested`, which long loops check at safe points.
    """
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    try:
        main()
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        logger.info("Interrupted, shutting down")
        sys.exit(130)


def one_line(message: str) -> str:
    """A message as one line: an error that spans lines is easy to miss in a peer's log and breaks `grep error:`."""
    return " ".join(message.split())


class RateLimitedLog:
    """Counts a recurring event and logs it only the 1st, 10th and every 100th time: a few lines, never a flood."""

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING):
        self.logger, self.level, self.count = logger, level, 0

    def __call__(self, message: str) -> None:
        self.count += 1
        if self.count in (1, 10) or self.count % 100 == 0:
            self.logger.log(self.level, f"{message} ({self.count} so far)", stacklevel=2)


_MAIN_PID = None
stop_requested = threading.Event()


def check_stop() -> None:
    """Raise KeyboardInterrupt if a stop signal arrived (call this from long-running loops)."""
    if stop_requested.is_set():
        raise KeyboardInterrupt


def _request_stop(signum, frame) -> None:
    if os.getpid() != _MAIN_PID:  # a forked helper process inherited this handler: behave as by default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    stop_requested.set()
    raise KeyboardInterrupt
