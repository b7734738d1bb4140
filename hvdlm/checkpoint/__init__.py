"""Checkpoints: written so that no crash leaves a broken one, verified when read.

A checkpoint is a main file that rank 0 writes (``torch.save``: the model, the optimizer, the
run's train state, the sync strategy's shared state tagged with the strategy's name, the model
shape, the tokenizer and the config) and, when the strategy keeps state of each rank's own
(PowerSGD's residuals; under local_sgd/diloco each rank's parameters and moments between syncs),
one file per rank, written by that rank. The main file carries a ``checksum`` (a sha256 over
every tensor's bytes and every value, recomputed on load) and a manifest of the rank files (name,
size, sha256), and is written last: a set is complete when its main file exists. Nothing per
rank is gathered or broadcast: on resume each rank reads only its own file (checking its sha256),
and on another rank count the rank files are ignored with one line. Loading uses
``torch.load(weights_only=True)``.

Layout of ``out_dir`` (``keep`` = ``--keep_checkpoints``):

    checkpoint.pt                 always the newest complete checkpoint (what `hvdlm sample` reads)
    checkpoint-step00000120.pt    with keep > 1: the last ``keep`` checkpoints by step; the newest
    checkpoint-step00000100.pt    is the same file as checkpoint.pt (a hard link, or a copy)
    ranks/step00000120-rank00003-of00004.pt   rank 3's own state at step 120 of a 4-rank run

Each file is written under a temporary name, flushed to disk (fsync), then renamed into place,
and ``checkpoint.pt`` is switched to the new file by another rename: a rename is atomic, so a
kill at any moment leaves ``checkpoint.pt`` naming a complete checkpoint (the old or the new
one) and at worst a stray ``.checkpoint*.tmp`` file, which the next save removes. Older
checkpoints are deleted only after the new one is in place; each rank deletes its own older files.

A resume (``newest_valid``) tries the checkpoints newest first and takes the first that loads,
verifies and whose rank files are all there at their size, reporting each one it skipped and why.
Checkpoints of older hvdlm versions (train state at the top level, per-rank states gathered into
the main file) are read through ``upgrade``.

``files.py`` is the main file, ``ranks.py`` the per-rank files, ``checkpointer.py`` the layout and
the ``Checkpointer`` the loop calls.
"""


from hvdlm.checkpoint.checkpointer import FORMAT, TRAIN_KEYS, Checkpointer, upgrade
from hvdlm.checkpoint.files import (CHECKSUM_KEY, FILENAME, STEP_FILE, Found, candidates, check_shape, checksum,
                                    load, newest_valid, path_in, save, step_path, unreadable)
from hvdlm.checkpoint.ranks import (RANK_FILE, RANKS_DIR, own_rank_files, prune_rank_files, rank_file_name,
                                    read_rank_file, torn, write_rank_file)

__all__ = ["CHECKSUM_KEY", "FILENAME", "FORMAT", "RANKS_DIR", "RANK_FILE", "STEP_FILE", "TRAIN_KEYS", "Checkpointer",
           "Found", "candidates", "check_shape", "checksum", "load", "newest_valid", "own_rank_files", "path_in",
           "prune_rank_files", "rank_file_name", "read_rank_file", "save", "step_path", "torn",
           "unreadable", "upgrade", "write_rank_file"]
