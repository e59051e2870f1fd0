"""A run folder: its layout, who may write it, and whether a run in it may be resumed.

``aptune train`` and ``aptune pretrain`` write into one folder (``--output-dir``).
This module owns what a real run needs from it:

* the folder must be a writable directory (one-line errors otherwise, before any work);
* one process at a time: the main rank holds an exclusive lock on ``.aptune.lock``
  (released by the operating system if the process dies); a second command on the
  same folder refuses in one line naming the holder's pid;
* temporary files that a killed atomic write left behind are removed on start;
* a checkpoint is resumed only when the recipe that made it and the current one agree
  on everything that changes the run (``SAFE_TO_CHANGE`` lists what may differ);
* a new run never overwrites another run's files: a folder holding run files but no
  checkpoint is reused only when its ``config.yaml`` is this recipe's (a run killed
  before its first checkpoint), otherwise the command refuses;
* a refused command writes nothing: the folder's ``config.yaml`` is written only once
  the run is accepted, and a folder this command created is removed again if it stays empty.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any

from aptune.config import Config, read_yaml_mapping, save_config
from aptune.engine import distributed as dist_utils
from aptune.engine.checkpoint import load_training_state
from aptune.engine.runtime import pick_device
from aptune.errors import ConfigError, OutputError
from aptune.fileio import make_folder, output_error, remove_stale_temporaries

log = logging.getLogger(__name__)

# The run folder's layout: every name a command writes into it (or reads back) is spelled here once.
CONFIG_NAME = "config.yaml"  # the resolved recipe
CHECKPOINT_NAME = "checkpoint.pt"  # what a resume continues from (aptune.engine.checkpoint)
ADAPTER_NAME = "adapter.safetensors"  # aptune train's result
RANDOM_BACKBONE_NAME = "backbone.safetensors"  # the frozen weights when model.pretrained is not set
PRETRAINED_NAME = "pretrained.safetensors"  # aptune pretrain's encoder
METRICS_LOG_NAME = "metrics.jsonl"  # one JSON line per logged step and evaluation
METRICS_NAME = "metrics.json"  # the final summary
REPORT_NAME = "report.md"
PLOTS_DIR = "plots"
CURVES_PLOT, CONFUSION_PLOT, PER_CLASS_PLOT = "curves.png", "confusion.png", "per_class.png"
TENSORBOARD_DIR = "tensorboard"
EVAL_DIR = "eval"  # aptune eval --run RUN writes its outputs here
LOCK_NAME = ".aptune.lock"
# what train / pretrain / eval write into a run folder: a new run must not find another's
RUN_FILES = (
    CONFIG_NAME,
    CHECKPOINT_NAME,
    ADAPTER_NAME,
    RANDOM_BACKBONE_NAME,
    PRETRAINED_NAME,
    METRICS_LOG_NAME,
    METRICS_NAME,
    REPORT_NAME,
    PLOTS_DIR,
    TENSORBOARD_DIR,
    EVAL_DIR,
)

# Keys a resumed run may change: they decide how long it runs, how often it reports, and
# where it computes, never which numbers it produces (data order and augmentation are
# seeded per item, so the number of loader workers does not change them either).
SAFE_TO_CHANGE = frozenset(
    {
        "train.epochs",
        "train.log_every",
        "train.save_every",
        "train.eval_every",
        "train.device",
        "train.compile",
        "model.grad_checkpointing",
        "model.recompute_mlp",
        "model.recompute_qkv",
        "data.num_workers",
        "data.decode_threads",
        "data.max_bad_fraction",
    }
)


class RunFolder:
    """Open with :meth:`open` on every rank (only the main rank writes or locks); close always."""

    def __init__(self, path: str | Path, is_main: bool = True) -> None:
        if str(path).strip() == "":
            raise ConfigError("--output-dir is empty: give the folder the run should be written to")
        self.path = Path(path)
        self.is_main = is_main
        self.checkpoint_path = self.path / CHECKPOINT_NAME
        self.payload: dict[str, Any] | None = None  # the checkpoint a resume continues from
        self._created = False
        self._lock_handle = None

    # ------------------------------------------------------------------ opening
    def open(self, config: Config, resume: bool | None) -> bool:
        """Check, lock and clean the folder; returns whether the run resumes a checkpoint."""
        self._refuse_a_file_in_the_way()
        if self.is_main:
            self._created = not self.path.exists()
            make_folder(self.path)
            self._check_writable()
            self._lock()
            removed = remove_stale_temporaries(self.path)
            if removed:
                log.info("%s: removed %d temporary file(s) left by an interrupted write", self.path, len(removed))
        return self.check(config, resume)

    def check(self, config: Config, resume: bool | None) -> bool:
        """Everything :meth:`open` refuses, read-only: whether the run would resume, or an error."""
        self._refuse_a_file_in_the_way()
        resuming = self._should_resume(resume)
        if resuming:
            self.payload = load_training_state(self.checkpoint_path)
            refuse_changed_recipe(self.payload.get("config"), config, self.path)
        else:
            self._refuse_another_runs_files(config)
        return resuming

    def write_config(self, config: Config) -> None:
        if self.is_main:
            save_config(config, self.path / CONFIG_NAME)

    def close(self, succeeded: bool) -> None:
        """Release the lock; a folder this command created and left empty goes again."""
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None
            with contextlib.suppress(OSError):
                (self.path / LOCK_NAME).unlink()
        if self.is_main and self._created and not succeeded:
            with contextlib.suppress(OSError):
                if self.path.is_dir() and not any(self.path.iterdir()):
                    self.path.rmdir()

    # ------------------------------------------------------------------ details
    def _should_resume(self, resume: bool | None) -> bool:
        """--resume needs a checkpoint, --no-resume refuses one, the default takes one if present."""
        exists = self.checkpoint_path.exists()
        if resume is True and not exists:
            raise ConfigError(f"{self.path}: --resume given but there is no {CHECKPOINT_NAME}")
        if resume is False and exists:
            raise ConfigError(f"{self.path}: holds a checkpoint already; use --resume or another --output-dir")
        return exists

    def _refuse_a_file_in_the_way(self) -> None:
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            return
        except OSError as exc:  # a name too long, a file where a folder should be, no permission
            raise output_error(self.path, exc) from None
        if not stat.S_ISDIR(mode):
            raise OutputError(f"{self.path}: --output-dir is a file, not a folder")

    def _refuse_another_runs_files(self, config: Config) -> None:
        """A new run may reuse a folder only if what is there is its own unfinished start."""
        if not self.path.is_dir():
            return
        found = [name for name in RUN_FILES if (self.path / name).exists()]
        if not found:
            return
        stored = self._stored_config()
        if stored is not None and not changed_keys(stored, config):
            return  # killed before its first checkpoint: the same recipe starts over
        what = "another recipe's run" if stored is not None else "files of another run"
        raise ConfigError(
            f"{self.path}: holds {what} ({', '.join(found[:3])}) and no checkpoint to resume; "
            "nothing there is overwritten: use another --output-dir or remove those files"
        )

    def _stored_config(self) -> dict[str, Any] | None:
        path = self.path / CONFIG_NAME
        if not path.is_file():
            return None
        try:
            return read_yaml_mapping(path, what="run config")
        except ConfigError:
            return None

    def _check_writable(self) -> None:
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise OutputError(f"{self.path}: cannot write (permission denied)")

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not a POSIX system: run without the guard
            return
        lock_path = self.path / LOCK_NAME
        try:
            handle = open(lock_path, "a+")  # noqa: SIM115 - held open for the whole run
        except OSError as exc:
            raise output_error(lock_path, exc) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ConfigError(
                f"{self.path}: another aptune process is writing this run folder ({holder}); "
                "wait for it to finish or use another --output-dir"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
        except OSError as exc:
            handle.close()
            raise output_error(lock_path, exc) from None
        self._lock_handle = handle


def run_recipe(config: Config, output_dir: str | Path, resume: bool | None, body, check=None):
    """A recipe's frame, on every rank: ``check()``, pick the device, open the run folder, run
    ``body(folder, resuming, info, device)`` and close the folder; an error on one rank stops all."""

    def on_this_rank(info):
        if check is not None:
            check()
        device = pick_device(config.train.device, info, config.train.precision)
        return run_in_folder(
            config, output_dir, resume, info, device, lambda folder, resuming: body(folder, resuming, info, device)
        )

    return dist_utils.run_on_every_rank(config.train.device, on_this_rank)


def run_in_folder(config: Config, output_dir: str | Path, resume: bool | None, info, device, body):
    """Open the run folder on every rank, run ``body(folder, resuming)``, always close it."""
    folder = RunFolder(output_dir, is_main=info.is_main)
    succeeded = False
    try:
        with dist_utils.together("while opening the run folder"):
            resuming = folder.open(config, resume)
        result = body(folder, resuming)
        succeeded = True
        return result
    finally:
        folder.close(succeeded)


def refuse_changed_recipe(stored: dict[str, Any] | None, config: Config, folder: Path) -> None:
    """Resume only with the recipe that made the checkpoint, apart from ``SAFE_TO_CHANGE``."""
    if not isinstance(stored, dict):
        return  # a checkpoint from before configs were stored: the tensor checks still apply
    changed = changed_keys(stored, config)
    if changed:
        saved, current = _flatten(_plain(stored)), _flatten(_plain(config.to_dict()))
        shown = ", ".join(f"{key} {saved[key]!r} -> {current[key]!r}" for key in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise ConfigError(
            f"{folder}: resuming would change how this run is made ({shown}{more}); resume with the "
            f"recipe in {folder / CONFIG_NAME} (only {', '.join(sorted(SAFE_TO_CHANGE))} may change) "
            "or use another --output-dir"
        )


def changed_keys(stored: dict[str, Any], config: Config) -> list[str]:
    """Keys whose value in ``config`` differs from the ``stored`` recipe, apart from SAFE_TO_CHANGE.

    Keys only one side knows (an older or newer aptune) are not compared.
    """
    current = _flatten(_plain(config.to_dict()))
    saved = _flatten(_plain(stored))
    return [
        key for key in sorted(current.keys() & saved.keys()) if key not in SAFE_TO_CHANGE and current[key] != saved[key]
    ]


def _plain(value: Any) -> Any:
    """Tuples as lists, as the checkpoint (and config.yaml) store them."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{section}.{key}": value
        for section, values in config.items()
        if isinstance(values, dict)
        for key, value in values.items()
    }
