"""The errors every layer raises for bad input: one class per kind of problem.

They live here, below every other module, so that the model, the data layer, the engine and
the commands raise and catch the same classes: an ``except ConfigError`` in a command catches
a bad preset name from the model layer as well as a bad YAML key from the engine.
"""


class ConfigError(ValueError):
    """A config file, an override or an argument names an unknown key or holds a value of the wrong
    kind (a ``ValueError``, so that callers catching bad values catch it too)."""


class CheckpointError(RuntimeError):
    """A weights file or a training checkpoint cannot be used: missing, truncated, corrupt, or not
    fitting the model. The message names the file and the offending keys."""
