"""conference-monitor: watch Twilio conferences and report when they start and end."""

__version__ = "0.1.0"
