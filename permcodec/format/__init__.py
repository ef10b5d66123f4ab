"""The .pc file: container and header checks, index coding, rANS and its backends, the index schemes.

Imports ``permcodec.init`` (to read init records), never ``permcodec.train``.
See specs/format.md.
"""
