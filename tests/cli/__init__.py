# A one-epoch run on 300 examples: every output of a config, in seconds.
SMALL_SLICE = ["--set", "train.epochs=1", "--set", "data.limit=300", "--quiet"]
