"""One process of a test's multi-process run: `python distributed_worker.py RECORD ARGS...` runs
`python -m tljax.train ARGS...` and writes to RECORD (JSON) the process count and index it ran with and
the examples (indices into the training split) it read for each training batch."""

import json
import sys


def main() -> int:
    record_path, argv = sys.argv[1], sys.argv[2:]
    import jax

    from tljax.data import batches
    from tljax.train.__main__ import main as train

    read = []
    original = batches.make_batch

    def recording(encoded, indices, *args, **kwargs):
        if "width" in kwargs:  # a training batch (evaluation batches are whole on every process)
            read.append([int(i) for i in indices])
        return original(encoded, indices, *args, **kwargs)

    batches.make_batch = recording  # the training iterator builds its batches through it
    code = train(argv)
    with open(record_path, "w") as handle:
        json.dump({"process_count": jax.process_count(), "process_index": jax.process_index(), "rows": read}, handle)
    return code


if __name__ == "__main__":
    sys.exit(main())
