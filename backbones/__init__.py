"""Built-in backbone families, one file each. Importing this package registers their site
adapters, checkpoint filters and named backbones."""
from . import medmamba, vim, vit, vmamba  # noqa: F401
