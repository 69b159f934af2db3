"""``python -m kit.cli`` is the ``kit`` command."""

from kit.cli.main import main

raise SystemExit(main())
