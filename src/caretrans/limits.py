"""Limits of the CARE network that modules without torch (recipes, command-line checks) need too."""

# The network downsamples 32x; below that the last stage would have no pixels.
MIN_INPUT_SIZE = 32
