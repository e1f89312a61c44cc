"""File transfer on the gateway: uploads from the outbox and devices, downloads into the inbox."""
