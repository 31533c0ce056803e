"""``python -m napari_treg.cli``: the same as the ``napari-treg`` command."""

import sys

from napari_treg.cli.commands import main

sys.exit(main())
