"""How a run's Lightning checkpoints reach the disk and come back: atomically, and never as
code.

* :class:`RunCheckpointIO`, a Lightning ``CheckpointIO`` plugin, writes every ``.ckpt``
  (``ModelCheckpoint``'s ``last.ckpt`` and ``best-epoch=E.ckpt``, ``trainer.save_checkpoint``,
  the Slurm requeue checkpoint ``hpc_ckpt_N.ckpt``) to a short-named temporary file in the
  checkpoint's own folder, flushes it to the disk and renames it into place
  (:func:`~tomoseg.io.writers.atomic_write`). Lightning's own writer goes through fsspec, whose
  local transaction writes into ``$TMPDIR`` and *copies* the file over the checkpoint when the
  run folder is on another file system (the usual case on clusters): a kill -9 or a full disk
  during that copy truncated ``last.ckpt``. A rename in one folder cannot.
* It loads every checkpoint with ``torch.load(weights_only=True)`` whatever the caller asked
  and whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says: a checkpoint never runs code (a
  crafted ``hpc_ckpt_*.ckpt`` dropped into a run folder is refused in one line).
* :class:`RunModelCheckpoint`, Lightning's ``ModelCheckpoint`` storing the checkpoint paths of
  its state (best, last, k-th best) relative to its folder, so a copied or moved run folder
  resumes from its own files; absolute paths of runs written before are mapped into the
  folder the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from tomoseg.errors import TomosegError
from tomoseg.io.writers import atomic_write

_PATH = str | os.PathLike[str]


class RunCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer and reader for run folders (see the module docstring)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        """``torch.save`` into a temporary file beside ``path``, fsync, rename onto ``path``.

        Raises:
            TypeError: ``storage_options`` given (as Lightning's ``TorchCheckpointIO``).
            OSError: the write failed (a full disk); ``path`` is left as it was.
        """
        if storage_options is not None:
            raise TypeError("storage_options: not supported for run checkpoints")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp), durable=True)

    def load_checkpoint(
        self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load ``path`` with ``weights_only=True`` (tensors and plain containers only; the
        ``weights_only`` asked for is ignored).

        Raises:
            FileNotFoundError: no such file.
            TomosegError: a file that does not load that way (truncated, damaged, or holding
                pickled code), naming it.
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {p}")
        try:
            return torch.load(p, map_location=map_location or "cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure: refuse the file
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise TomosegError(
                f"cannot resume: checkpoint {p} is damaged or holds more than weights "
                f"(loaded only as weights: {reason}); remove it or start over with "
                "overwrite=True"
            ) from None


#: the entries of ``ModelCheckpoint``'s state that hold checkpoint paths
_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


class RunModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose saved state names checkpoints relative to its folder (see the
    module docstring). Its ``state_key`` is ``ModelCheckpoint``'s, so checkpoints of runs
    written before restore it."""

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def _relative(self, path: str) -> str:
        return Path(path).name if path else path

    def _here(self, path: str) -> str:
        if not path or self.dirpath is None:
            return path
        return str(Path(self.dirpath) / Path(path).name)

    def state_dict(self) -> dict[str, Any]:
        """Lightning's state, with file names instead of paths and no folder."""
        state = super().state_dict()
        for key in _PATH_KEYS:
            state[key] = self._relative(state.get(key) or "")
        state["best_k_models"] = {self._relative(k): v for k, v in state["best_k_models"].items()}
        state["dirpath"] = "."
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state with its checkpoints taken from this callback's folder."""
        state = dict(state_dict)
        for key in _PATH_KEYS:
            if key in state:
                state[key] = self._here(state[key] or "")
        if "best_k_models" in state:
            state["best_k_models"] = {self._here(k): v for k, v in state["best_k_models"].items()}
        state["dirpath"] = self.dirpath
        super().load_state_dict(state)
