"""File transfer on the gateway (docs/OPERATIONS.md, "File transfer"): uploads from the outbox and
from devices on the bulk lane (outbox scan, upload state, the bulk source, receipts), files devices
send over the local broker, downloads from the cloud into the inbox, the ``files`` CLI's helpers."""
