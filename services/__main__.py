"""Allow `python -m services` as an alias of the `channelshift` command."""

from services.cli import main

raise SystemExit(main())
