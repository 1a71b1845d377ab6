"""What every command-line entry point shares: user errors become one clear line and exit code 2."""
from __future__ import annotations

import sys
from typing import Callable, Sequence

from runtime.errors import UserError


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)`; turn a UserError into `error: ...` on stderr and exit status 2."""
    try:
        return int(main(argv) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
