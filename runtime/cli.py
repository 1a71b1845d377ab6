"""What every command-line entry point shares: user errors (and places it may not write) become one clear line
and exit code 2."""
from __future__ import annotations

import errno
import sys
from typing import Callable, Sequence

from runtime.errors import UserError

# Errors of the place, not of the program: a read-only or foreign directory, a file where a directory belongs.
PLACE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.ENOSPC, errno.EDQUOT)


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)`; turn a UserError, or an OSError of a place it cannot write (SGM_CACHE, --out), into
    `error: ...` on stderr and exit status 2."""
    try:
        return int(main(argv) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in PLACE_ERRNOS:
            raise
        where = e.filename if e.filename is not None else "a file"
        print(f"error: cannot write {where}: {e.strerror}; make it writable or point the output (--out, "
              f"$SGM_CACHE for the asset cache) at a directory you can write", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
