"""Built-in token-reduction methods, one file each. Importing this package registers them."""
from . import (ats, dpc_knn, evit, kmedoids, none, pitome, quartermap, random_drop,  # noqa: F401
               rmeeto, tome, topvim)
