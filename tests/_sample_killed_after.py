"""``python tests/_sample_killed_after.py K ARGS...``: the sample command with ARGS, killed by
SIGKILL right after this process wrote its K-th shard (for the restart test of
``tests/test_sample.py``, one copy per rank under torchrun).

The command runs unchanged except that the sampler's own ``write_shard`` is wrapped: the K-th
call writes its shard and then the process kills itself, with no clean-up, as a machine failure
would stop it.
"""

from __future__ import annotations

import os
import signal
import sys

from adapters.torch_sit.imagenet import sample


def main(argv: list[str]) -> int:
    kill_after, args = int(argv[0]), argv[1:]
    write = sample.write_shard
    written = 0

    def write_then_die(*a, **kw):
        nonlocal written
        write(*a, **kw)
        written += 1
        if written == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    sample.write_shard = write_then_die
    return sample.main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
