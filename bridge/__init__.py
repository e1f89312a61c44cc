"""Uplink to the cloud broker and its cloud-side counterpart (sink, report, envelope codec)."""
