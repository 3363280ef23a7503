"""The web view: server-rendered pages of the history (no build step, no JavaScript)."""
