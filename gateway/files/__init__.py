"""File transfer on the gateway (docs/OPERATIONS.md, "File transfer"): uploads from the outbox on the
bulk lane (outbox scan, upload state, the bulk source, receipts), the ``files`` CLI's helpers."""
