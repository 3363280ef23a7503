"""Twilio conference status callbacks: verified, parsed, and recorded on the poll path.

`signature` and `form` are pure; `decide` turns a callback into an observation
(pure); `writer` records callbacks in groups through the store; `endpoint` is
the HTTP route.
"""
