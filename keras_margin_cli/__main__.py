"""``python -m keras_margin_cli``: the ``keras-margin`` command line."""

import sys

from keras_margin_cli import main

sys.exit(main())
