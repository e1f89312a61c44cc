"""File transfer on the gateway: uploads from the outbox and from devices, downloads into the inbox."""
