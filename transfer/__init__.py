"""Downstream side of the suite: the transfer tasks (classification, detection, segmentation, the
in-domain probe), the encoders they start from, their metrics and records."""
# The built-in tasks register on import (transfer.registry), in the table's column order; here, so
# that whatever of transfer is imported first (TransferConfig's --task choices) finds them.
from . import classification, detection, segmentation, in_domain  # noqa: F401,I001
