"""``python -m dataset_registry``: the same command line as ``dataset-registry`` (see ``cli``)."""
import sys

from dataset_registry.cli import main

sys.exit(main())
