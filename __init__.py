"""tda: a training-data attribution index.

The repository root is the ``tda`` package; its subpackages are layered and import only
downwards: ``schemas`` <- ``attribution`` <- ``pipeline`` <- ``jobs``.
"""

__version__ = "0.1.0"
