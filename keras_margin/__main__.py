"""``python -m keras_margin``: the ``keras-margin`` command, after importing this package.

That import brings in TensorFlow before the command can quiet its log lines; ``keras-margin``
and ``python -m keras_margin_cli`` start without it.
"""

import sys

from keras_margin_cli import main

sys.exit(main())
