"""Built-in categories: ``elpv`` (real solar cells from a pip package) and ``sealant``
(procedurally generated)."""
