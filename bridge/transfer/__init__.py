"""Files on disk for the file-transfer protocol (:mod:`bridge.protocol.files`): planning a file to
send (its manifest, its chunks read back and checked) and assembling a received one (chunks written
at their offsets, progress kept on disk, the whole verified and installed atomically). Used by both
ends: the gateway (uploads out, downloads in) and the cloud side (uploads in, downloads out)."""
