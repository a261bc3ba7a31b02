"""Built-in categories: ``elpv`` (real solar cells from a pip package), and ``sealant`` and
``sealant_line`` (procedurally generated: square 256 px parts, and long parts in 2048 x 640
frames)."""
