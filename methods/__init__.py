"""Built-in token-reduction methods, one file each. Importing this package registers them."""
from . import none, quartermap, random_drop, tome  # noqa: F401
