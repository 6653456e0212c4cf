"""The embedded default behind ``baquad demo``: the digits SiT and its data (:mod:`.model`), the
shipped weights checked by SHA-256 (:mod:`.shipped`, ``weights/``), the reference set
(:mod:`.reference`), their training (:mod:`.train`) and the demos (:mod:`.demo`, :mod:`.edit`).

Importing the package registers the ``digits-sit`` backbone (scikit-learn is imported only for
the data)."""

from . import model  # noqa: F401  (registers "digits-sit")
