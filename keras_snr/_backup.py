"""Callback state saved beside `keras.callbacks.BackupAndRestore`'s checkpoint.

Keras backs up the model and the optimizer, not the callbacks. The package's
callbacks save their state at every epoch end, keyed by the optimizer's
iteration count and the next epoch's index, and keep the last few: when
`BackupAndRestore` restores a checkpoint (written at an epoch end, or mid-epoch
with `save_freq=N`, after which Keras runs that epoch again from its first
batch), the state that belongs to it is the newest one with at most the
restored iterations and the epoch Keras resumes at. So an interrupt at any
point, even between the callback's save and `BackupAndRestore`'s, finds the
matching state.
"""

import json
import os

import numpy as np

KEEP = 3  # states kept: BackupAndRestore(double_checkpoint=True) may go back one


class EpochBackup:
    """Save and find a callback's state (a JSON-able dict plus NumPy arrays)
    in `directory`, under file names starting with `name`."""

    def __init__(self, directory, name):
        self.directory, self.name = directory, name

    def _path(self, iterations, suffix):
        return os.path.join(self.directory, f"{self.name}-{iterations:012d}{suffix}")

    def _saved(self):
        """Iteration counts of the saved states, ascending."""
        if not os.path.isdir(self.directory):
            return []
        prefix, out = f"{self.name}-", []
        for entry in os.listdir(self.directory):
            if entry.startswith(prefix) and entry.endswith(".json"):
                stem = entry[len(prefix):-5]
                if stem.isdigit():
                    out.append(int(stem))
        return sorted(out)

    def save(self, state, arrays):
        """Write `state` (with its `iterations` and `next_epoch`) and
        `arrays` (a dict of arrays), atomically; drop all but the newest
        KEEP states."""
        os.makedirs(self.directory, exist_ok=True)
        iterations = state["iterations"]
        path = self._path(iterations, ".npz")
        with open(path + ".tmp", "wb") as f:
            np.savez(f, **arrays)
        os.replace(path + ".tmp", path)
        path = self._path(iterations, ".json")  # written last: marks the state complete
        with open(path + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(path + ".tmp", path)
        for old in self._saved()[:-KEEP]:
            self._remove(old)

    def load(self, iterations, epoch):
        """The newest state with at most `iterations` whose `next_epoch` is
        `epoch`, as `(state, arrays)`, or None. States saved after
        `iterations` (a later, abandoned run) are removed."""
        found = None
        for saved in self._saved():
            if saved > iterations:
                self._remove(saved)
                continue
            with open(self._path(saved, ".json")) as f:
                state = json.load(f)
            if state.get("next_epoch") == epoch:
                found = saved, state
        if found is None:
            return None
        with np.load(self._path(found[0], ".npz")) as arrays:
            return found[1], {key: arrays[key] for key in arrays.files}

    def _remove(self, iterations):
        for suffix in (".json", ".npz"):
            path = self._path(iterations, suffix)
            if os.path.exists(path):
                os.remove(path)
