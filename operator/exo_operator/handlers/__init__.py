"""kopf handlers; importing this package registers them (`kopf run -m exo_operator.handlers`)."""

from exo_operator.handlers import children, indexes, lifecycle, model

__all__ = ["children", "indexes", "lifecycle", "model"]
