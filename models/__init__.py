"""Model definitions, manifests, weights handling and inference engines."""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
