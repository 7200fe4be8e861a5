"""`python -m sim simulate|demo|fleet ...`, without the proxy's CLI."""

from __future__ import annotations

import sys

from sim.cli import demo, fleet, simulate

_USAGE = "usage: python -m sim {simulate,demo,fleet} [flags]  (each takes --help)"
_COMMANDS = {"simulate": simulate, "demo": demo, "fleet": fleet}


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(_USAGE)
        return 0
    if not argv or argv[0] not in _COMMANDS:
        print(_USAGE, file=sys.stderr)
        return 2
    return _COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
