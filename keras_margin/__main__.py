"""``python -m keras_margin``: the ``keras-margin`` command line."""

import sys

from keras_margin.cli import main

sys.exit(main())
